"""Validate rendered Kubernetes objects offline: CRD objects against the CRD's openAPIV3Schema (with the
``x-kubernetes-*`` extensions enforced), core objects against kubernetes-validate's bundled schemas."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from jsonschema import ValidationError
from jsonschema.protocols import Validator

ROOT = Path(__file__).parents[2]
KUBERAY_SCHEMAS = ROOT.parent / "shared" / "schemas" / "kuberay"
CRD_FILES = {
    ("ray.io", "RayService"): "ray.io_rayservices.yaml",
    ("ray.io", "RayCluster"): "ray.io_rayclusters.yaml",
}
# Not every CRD is at hand offline: the fields of monitoring.coreos.com/v1 PodMonitor the chart uses, typed
# as in prometheus-operator's CRD (a subset: any other field is reported as unknown).
PODMONITOR_SUBSET = yaml.safe_load(
    """
type: object
required: [apiVersion, kind, metadata, spec]
properties:
  apiVersion: {const: monitoring.coreos.com/v1}
  kind: {const: PodMonitor}
  metadata:
    type: object
    properties:
      name: {type: string}
      namespace: {type: string}
      labels: {type: object, additionalProperties: {type: string}}
      annotations: {type: object, additionalProperties: {type: string}}
  spec:
    type: object
    additionalProperties: false
    required: [selector]
    properties:
      jobLabel: {type: string}
      namespaceSelector:
        type: object
        additionalProperties: false
        properties:
          any: {type: boolean}
          matchNames: {type: array, items: {type: string}}
      selector:
        type: object
        additionalProperties: false
        properties:
          matchLabels: {type: object, additionalProperties: {type: string}}
          matchExpressions:
            type: array
            items:
              type: object
              additionalProperties: false
              required: [key, operator]
              properties:
                key: {type: string}
                operator: {enum: [In, NotIn, Exists, DoesNotExist]}
                values: {type: array, items: {type: string}}
      podMetricsEndpoints:
        type: array
        items:
          type: object
          additionalProperties: false
          properties:
            port: {type: string}
            portNumber: {type: integer, minimum: 1, maximum: 65535}
            path: {type: string}
            scheme: {enum: [http, https, HTTP, HTTPS]}
            interval:
              type: string
              pattern: "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?\\
                (([0-9]+)ms)?)$"
            scrapeTimeout: {type: string}
            honorLabels: {type: boolean}
            relabelings:
              type: array
              items:
                type: object
                additionalProperties: false
                properties:
                  sourceLabels: {type: array, items: {type: string, pattern: "^[a-zA-Z_][a-zA-Z0-9_]*$"}}
                  separator: {type: string}
                  targetLabel: {type: string}
                  regex: {type: string}
                  replacement: {type: string}
                  action: {type: string}
"""
)
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas bundled.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def structural_to_jsonschema(node: Any) -> Any:
    """A CRD structural schema as JSON Schema that the API server's rules hold in.

    - An object with ``properties`` and neither ``additionalProperties`` nor
      ``x-kubernetes-preserve-unknown-fields`` rejects unknown fields (``kubectl apply`` validates
      strictly by default; the server would otherwise drop them silently, which is a bug too).
    - ``x-kubernetes-int-or-string`` becomes ``anyOf: [integer, string]``; ``nullable`` allows null.
    - ``x-kubernetes-list-type`` (map/set) and int32/int64 ``format`` are left for the validator's
      extra keywords (see ``_validator_class``).
    """
    if isinstance(node, list):
        return [structural_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: structural_to_jsonschema(value) for key, value in node.items()}
    if "properties" in node and isinstance(node["properties"], dict):
        out["properties"] = {k: structural_to_jsonschema(v) for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _list_type(
    validator: Validator, list_type: str, instance: Any, schema: dict
) -> Iterator[ValidationError]:
    if not isinstance(instance, list) or list_type == "atomic":
        return
    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        defaults = {k: schema.get("items", {}).get("properties", {}).get(k, {}).get("default") for k in keys}
        seen_keys: set[tuple[Any, ...]] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k, defaults[k]) for k in keys)
            if key in seen_keys:
                yield ValidationError(f"duplicate entry for map keys {dict(zip(keys, key, strict=True))}")
            seen_keys.add(key)


def _int_format(validator: Validator, fmt: str, instance: Any, schema: dict) -> Iterator[ValidationError]:
    if fmt in _INT_RANGES and isinstance(instance, int) and not isinstance(instance, bool):
        low, high = _INT_RANGES[fmt]
        if not low <= instance <= high:
            yield ValidationError(f"{instance} is out of range for {fmt}")


def _validator_class() -> type[Validator]:
    base = jsonschema.Draft7Validator
    return jsonschema.validators.extend(
        base, {"x-kubernetes-list-type": _list_type, "format": _int_format}, type_checker=base.TYPE_CHECKER
    )


@cache
def crd_validator(group: str, kind: str, version: str) -> Validator:
    """Validator of ``kind`` at ``version`` from the KubeRay CRD in shared/schemas/kuberay."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~18k lines
    crd = yaml.load((KUBERAY_SCHEMAS / CRD_FILES[(group, kind)]).read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["served"], f"{group}/{version} {kind} is not served"
    schema = structural_to_jsonschema(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    cls = _validator_class()
    cls.check_schema(schema)
    return cls(schema)


def label_errors(node: Any, path: str = "") -> Iterator[str]:
    """Label keys and values that the API server would refuse, in every ``metadata.labels`` of an object
    (pod templates and claim templates included), which the OpenAPI schemas leave unchecked."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from label_errors(item, f"{path}.{i}")
    elif isinstance(node, dict):
        labels = node.get("metadata", {}).get("labels", {}) if isinstance(node.get("metadata"), dict) else {}
        for key, value in (labels or {}).items():
            prefix, _, name = key.rpartition("/")
            if not (_LABEL_NAME.match(name) and len(name) <= 63) or (
                prefix and not (_DNS_SUBDOMAIN.match(prefix) and len(prefix) <= 253)
            ):
                yield f"{path}.metadata.labels: bad key {key!r}"
            if not (isinstance(value, str) and _LABEL_VALUE.match(value) and len(value) <= 63):
                yield f"{path}.metadata.labels.{key}: bad value {value!r}"
        for key, value in node.items():
            yield from label_errors(value, f"{path}.{key}" if path else key)


def errors(obj: dict[str, Any]) -> list[str]:
    """Every schema violation of one Kubernetes object, as readable lines (empty: valid)."""
    problems: list[str] = sorted(set(label_errors(obj)))
    meta = obj.get("metadata", {})
    name = meta.get("name", "")
    if not (_DNS_SUBDOMAIN.match(name) and len(name) <= 253):
        problems.append(f"metadata.name {name!r} is not a DNS subdomain")
    group, _, version = obj["apiVersion"].rpartition("/")
    if (group, obj["kind"]) == ("monitoring.coreos.com", "PodMonitor"):
        for err in jsonschema.Draft7Validator(PODMONITOR_SUBSET).iter_errors(obj):
            problems.append(f"{'.'.join(map(str, err.absolute_path)) or '<root>'}: {err.message}")
        return problems
    if (group, obj["kind"]) in CRD_FILES:
        validator = crd_validator(group, obj["kind"], version)
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            problems.append(f"{'.'.join(map(str, err.absolute_path)) or '<root>'}: {err.message}")
        return problems
    for kube_version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(map(str, err.absolute_path)) or "<root>"
            problems.append(f"[k8s {kube_version}] {path}: {err.message}")
    return problems
