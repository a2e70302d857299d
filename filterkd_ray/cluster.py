"""Offline checks of Ray cluster-launcher configs (`cluster.yaml`, `cluster-onprem.yaml`).

Why: `ray up` finds a typo or a fractional resource only after it has started talking to the
cloud, and a cluster whose node types cannot host a trial makes Tune wait silently forever.
`validate_cluster_config` runs the same checks `ray up` runs before touching a cloud (Ray's
JSON schema, then Ray's own `prepare_config` + `validate_config`), in well under a second,
with no credentials, and turns any failure into one `InputError` line naming the key.
`cluster_resources_offered` lists what each node type offers, so a sweep can be checked
against the cluster before it starts ("no node type offers GPU: 4").

Ray's `prepare_config`/`validate_config` are private API (`ray.autoscaler._private.util`):
that is one more reason Ray is pinned exactly (pyproject.toml).
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import os
import re
import shlex
from pathlib import Path

import yaml

from filterkd_ray import InputError, read_yaml_mapping

# vCPUs, GPUs and memory (GiB) of the EC2 instance types the configs use or suggest (AWS
# instance-type pages). On AWS Ray detects CPU/GPU from the instance type when `resources`
# is {}, but only by asking the EC2 API; this table lets the check stay offline.
INSTANCE_TYPES: dict[str, tuple[int, int, int]] = {
    "m5.2xlarge": (8, 0, 32), "m5.4xlarge": (16, 0, 64), "m5.8xlarge": (32, 0, 128),
    "m6i.2xlarge": (8, 0, 32), "m6i.4xlarge": (16, 0, 64), "m6i.8xlarge": (32, 0, 128),
    "r5.2xlarge": (8, 0, 64), "r5.4xlarge": (16, 0, 128),
    "g5.xlarge": (4, 1, 16), "g5.2xlarge": (8, 1, 32), "g5.4xlarge": (16, 1, 64),
    "g5.12xlarge": (48, 4, 192), "g5.48xlarge": (192, 8, 768),
    "g6.xlarge": (4, 1, 16), "g6.2xlarge": (8, 1, 32), "g6.4xlarge": (16, 1, 64),
    "g6.12xlarge": (48, 4, 192), "g6.48xlarge": (192, 8, 768),
    "p4d.24xlarge": (96, 8, 1152), "p5.48xlarge": (192, 8, 2048),
}

_COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def _ray_schema() -> dict:
    import ray.autoscaler
    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        return json.load(f)


def _schema_message(err) -> str:
    """One line for the most relevant jsonschema error, naming the dotted key."""
    where = ".".join(str(p) for p in err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = list(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        key = extra[0] if extra else "?"
        near = difflib.get_close_matches(key, allowed, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; allowed here: {', '.join(allowed)}"
        return f"{where + '.' if where else ''}{key}: unknown key{hint}"
    parent = err.absolute_path[0] if err.absolute_path else ""
    if parent in _COMMAND_KEYS and err.validator == "type" and isinstance(err.instance, dict):
        return (f"{where}: YAML read this command as a mapping (a ': ' inside it, e.g. "
                f"--resources='{{\"X\": 1}}'); quote the whole command or write it with >-")
    if "resources" in err.absolute_path and err.validator in ("type", "minimum"):
        return (f"{where}: {err.instance!r} is not a whole number >= 0; node-type resources "
                f"are integers (fractions belong in a trial's request, not in a node)")
    return f"{where or 'config'}: {err.message}"


def _ray_message(exc: BaseException) -> str:
    """Ray's own messages name the key in backticks or as 'The field X'; lead with it."""
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    msg = " ".join(msg.split())
    if msg.startswith("Unsupported node provider"):
        return f"provider.type: {msg}"
    m = re.search(r"`(\w+)`", msg) or re.search(r"[Ff]ield (\w+)", msg)
    return f"{m.group(1)}: {msg}" if m else msg


def validate_cluster_config(path: str | Path) -> dict:
    """Validate a cluster-launcher YAML offline; return the config as `ray up` would use it.

    Raises InputError (one line, naming the file and the key) on the first problem.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "cluster config", "cluster_name:, provider:, ...")

    import jsonschema
    schema = _ray_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = list(validator.iter_errors(raw))
    # A misspelt key also makes the real one "missing"; the unknown key is the useful report.
    typos = [e for e in errors if e.validator == "additionalProperties"]
    err = typos[0] if typos else jsonschema.exceptions.best_match(errors)
    if err is not None:
        raise InputError(f"{path}: {' '.join(_schema_message(err).split())}")

    # Ray's checks print to the terminal (cli_logger) before raising; keep the output to the
    # one line below. prepare_config only merges the provider's defaults.yaml: no cloud calls
    # (those happen later, in ray up's bootstrap step).
    from ray.autoscaler._private.util import prepare_config, validate_config
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            prepared = prepare_config(copy.deepcopy(raw))
            validate_config(prepared)
    except Exception as exc:   # Ray raises ValueError, RuntimeError, AssertionError, click errors
        raise InputError(f"{path}: {_ray_message(exc)}") from None

    try:
        _check_instance_types(prepared)
        cluster_resources_offered(prepared)      # parses `ray start` flags on-premise
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return prepared


def _check_instance_types(config: dict) -> None:
    """On AWS, explicit CPU/GPU counts must match the instance type they describe."""
    if config["provider"]["type"] != "aws":
        return
    for name, node in config.get("available_node_types", {}).items():
        itype = node.get("node_config", {}).get("InstanceType")
        if not itype:
            raise InputError(f"available_node_types.{name}.node_config.InstanceType: missing")
        if itype not in INSTANCE_TYPES:
            continue
        cpus, gpus, _ = INSTANCE_TYPES[itype]
        for key, real in (("CPU", cpus), ("GPU", gpus)):
            given = node.get("resources", {}).get(key)
            if given is not None and given != real:
                raise InputError(f"available_node_types.{name}.resources.{key}: {given}, but "
                                 f"{itype} has {real}; fix the count or the InstanceType")


def _start_flags(commands: list[str], where: str) -> dict:
    """Resources set by `ray start` flags (--num-cpus, --num-gpus, --resources JSON)."""
    out: dict[str, float] = {}
    for cmd in commands:
        if "ray start" not in cmd:
            continue
        try:
            tokens = shlex.split(cmd)
        except ValueError as err:
            raise InputError(f"{where}: cannot parse {cmd!r} ({err})") from None
        for i, tok in enumerate(tokens):
            flag, eq, value = tok.partition("=")
            if flag not in ("--num-cpus", "--num-gpus", "--resources"):
                continue
            if not eq:
                value = tokens[i + 1] if i + 1 < len(tokens) else ""
            if flag == "--resources":
                try:
                    custom = json.loads(value)
                except json.JSONDecodeError:
                    raise InputError(f"{where}: --resources={value!r} is not JSON; write "
                                     "--resources='{\"TRAIN_DRIVER\": 4}'") from None
                if not isinstance(custom, dict):
                    raise InputError(f"{where}: --resources must be a JSON object")
                for k, v in custom.items():
                    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                        raise InputError(f"{where}: --resources {k}: {v!r} is not a number >= 0")
                out.update(custom)
            elif value.isdigit():
                out["CPU" if flag == "--num-cpus" else "GPU"] = int(value)
            else:        # e.g. a $VAR: known only on the machine
                pass
    return out


def cluster_resources_offered(config: dict) -> list[dict]:
    """What each node type offers: [{node_type, head, max_nodes, resources, complete}].

    `complete` is False when CPU or GPU counts are only detected by Ray when the node starts
    (an on-premise node without --num-cpus/--num-gpus, an instance type not in
    INSTANCE_TYPES with `resources: {}`): a checker must then not claim "does not fit".
    Accepts the raw YAML mapping or the output of `validate_cluster_config`.
    """
    provider = config.get("provider", {}).get("type")
    if provider == "local":
        workers = config.get("provider", {}).get("worker_ips", []) or []
        offered = []
        for head, key, count in ((True, "head_start_ray_commands", 1),
                                 (False, "worker_start_ray_commands", len(workers))):
            if count == 0:
                continue
            res = _start_flags(config.get(key, []), key)
            offered.append({"node_type": "head" if head else "worker", "head": head,
                            "max_nodes": count, "resources": res,
                            "complete": "CPU" in res and "GPU" in res})
        return offered

    head_type = config.get("head_node_type")
    offered = []
    for name, node in config.get("available_node_types", {}).items():
        res: dict[str, float] = {}
        itype = node.get("node_config", {}).get("InstanceType")
        if itype in INSTANCE_TYPES:
            cpus, gpus, _ = INSTANCE_TYPES[itype]
            res.update({"CPU": cpus, "GPU": gpus})
        res.update(node.get("resources", {}))
        head = name == head_type
        offered.append({"node_type": name, "head": head,
                        "max_nodes": 1 if head else node.get("max_workers", config.get("max_workers", 0)),
                        "resources": res, "complete": "CPU" in res and "GPU" in res})
    return offered


def unplaceable(offered: list[dict], demand: dict[str, float]) -> str | None:
    """None if some node type can host `demand` (one bundle, e.g. {"GPU": 4}); else why not.

    A node type whose counts are only known at start-up is given the benefit of the doubt
    for CPU and GPU (custom resources are always explicit, so they are always checked).
    """
    def fits(node):
        for k, need in demand.items():
            have = node["resources"].get(k)
            if have is None and not node["complete"] and k in ("CPU", "GPU"):
                continue
            if (have or 0) < need or node["max_nodes"] == 0:
                return False
        return True

    if any(fits(n) for n in offered):
        return None
    want = ", ".join(f"{k}: {v:g}" for k, v in demand.items())
    have = "; ".join(f"{n['node_type']} " + (", ".join(f"{k}: {v:g}" for k, v in
                     sorted(n["resources"].items())) or "(detected at start)") for n in offered)
    return f"no node type offers {want} (offered: {have})"


# Where `ray up` leaves the cluster config on the head node (the autoscaler reads it; Ray Tune
# checks for it to tell an autoscaling cluster from a fixed one, tune/execution/cluster_info.py).
LAUNCHER_CONFIG = "~/ray_bootstrap_config.yaml"


def launcher_node_types(path: str | Path = LAUNCHER_CONFIG) -> list[dict] | None:
    """The node types the autoscaler may launch (as `cluster_resources_offered`), or None when
    this machine is not the head of a cluster started with `ray up` (no config file there).

    Why: on such a cluster the GPU workers scale from zero, so the nodes that are up when a
    sweep starts (often the CPU head alone) say nothing about what a trial can get.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text())   # `ray up` writes it as JSON: YAML reads it
        return cluster_resources_offered(config)
    except (yaml.YAMLError, AttributeError, TypeError, InputError):
        return None                                  # not a config we understand: no opinion


def workers_unplaceable(offered: list[dict], worker: dict[str, float],
                        num_workers: int) -> str | None:
    """None if the node types can host `num_workers` bundles of `worker` at once, else why not.

    One bundle must fit one node (`unplaceable`); the count is Σ max_nodes × bundles per node,
    counting only node types whose counts are known (unknown ones get the benefit of the doubt).
    """
    why = unplaceable(offered, worker)
    if why is not None:
        return why
    room = 0
    for node in offered:
        per_key = []
        for k, need in worker.items():
            have = node["resources"].get(k)
            if need <= 0 or (have is None and not node["complete"] and k in ("CPU", "GPU")):
                continue
            per_key.append(int((have or 0) / need + 1e-9))
        if not per_key:
            return None                                  # a node type of unknown size
        room += node["max_nodes"] * min(per_key)
    if room >= num_workers:
        return None
    want = ", ".join(f"{k}: {v:g}" for k, v in worker.items())
    return (f"{num_workers} workers of {{{want}}} need more than the node types can ever hold "
            f"together ({room} at most, with every node type at its max_workers)")
