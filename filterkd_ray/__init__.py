"""filterkd_ray: Filter-KD and its baselines as a Ray-distributed sweep system.

Ren, Guo & Sutherland, "Better Supervisory Signals by Observing Learning Paths", ICLR 2022.
"""
__version__ = "0.1.0"


class InputError(ValueError):
    """Bad user input (spec, data, paths). The CLI prints it as one line and exits 2."""


def read_yaml_mapping(path, what: str, keys: str) -> dict:
    """Load a YAML file that must hold a mapping (a spec, a cluster config); anything else is
    an InputError naming the file: missing, not YAML (with the line), or not a mapping."""
    from pathlib import Path

    import yaml
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "parse error"
        raise InputError(f"{path}: not valid YAML{where} ({problem})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: the file must hold a YAML mapping ({keys})")
    return raw
