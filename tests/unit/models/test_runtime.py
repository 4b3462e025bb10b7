"""The runtime choice on fake trials: the accuracy guard, the latency slack, the hybrid's cut, the
CPU fingerprint and the record beside the artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xz_serve.models.runtime import (
    RUNTIME_FILE,
    Plan,
    Trial,
    choose,
    cpu_fingerprint,
    guard,
    hybrid_cut,
    hybrid_trial,
    read_record,
    record_key,
    write_record,
)

REF = 0.90


def trial(
    name: str,
    batch1_ms: float,
    texts_per_s: float,
    accuracy: float = REF,
    batch_ms: dict[int, float] | None = None,
) -> Trial:
    return Trial(
        name=name,
        batch1_ms=batch1_ms,
        full_batch=32,
        full_texts_per_s=texts_per_s,
        intent_accuracy=accuracy,
        sentiment_accuracy=0.7,
        intent_agreement=0.99,
        batch_ms=batch_ms or {1: batch1_ms, 32: 32_000 / texts_per_s},
    )


# ----------------------------------------------------------------------------- guard


@pytest.mark.parametrize(
    ("accuracy", "passes"),
    [(REF, True), (REF - 0.003, True), (REF + 0.003, True), (REF - 0.0031, False), (REF + 0.004, False)],
)
def test_guard_allows_three_tenths_of_a_point_either_way(accuracy: float, passes: bool) -> None:
    assert (guard(trial("x", 1.0, 100.0, accuracy), REF) is None) is passes


def test_guard_says_how_far_off_the_candidate_is() -> None:
    why = guard(trial("x", 1.0, 100.0, REF - 0.01), REF)
    assert why is not None and "-1.00 points" in why


# ----------------------------------------------------------------------------- choose


def test_the_fastest_at_the_full_batch_wins() -> None:
    verdict = choose([trial("a", 1.6, 410.0), trial("b", 1.7, 650.0)], REF, fallback="a")
    assert verdict.choice == "b"
    assert verdict.refused == {}


def test_a_candidate_much_slower_for_one_text_is_passed_over() -> None:
    # 3.05 ms against 1.6 ms is beyond the 25% slack, whatever its throughput
    verdict = choose([trial("ort", 1.6, 410.0), trial("ov", 3.05, 650.0)], REF, fallback="ort")
    assert verdict.choice == "ort"


def test_an_inaccurate_candidate_is_refused_even_when_fastest() -> None:
    trials = [trial("ort", 1.6, 410.0), trial("fast", 1.0, 900.0, accuracy=REF - 0.02)]
    verdict = choose(trials, REF, fallback="ort")
    assert verdict.choice == "ort"
    assert set(verdict.refused) == {"fast"}
    # the slack is measured against passing candidates only: the refused one sets no bar
    assert "1.60 ms" in verdict.reason


def test_the_fallback_serves_when_nothing_passes() -> None:
    trials = [trial("a", 1.0, 400.0, REF - 0.01), trial("b", 1.0, 500.0, REF + 0.01)]
    verdict = choose(trials, REF, fallback="a")
    assert verdict.choice == "a"
    assert set(verdict.refused) == {"a", "b"}
    assert "no candidate passed" in verdict.reason


def test_equal_throughput_goes_to_the_quicker_single_text() -> None:
    verdict = choose([trial("slow1", 1.2, 500.0), trial("fast1", 1.0, 500.0)], REF, fallback="slow1")
    assert verdict.choice == "fast1"


# ----------------------------------------------------------------------------- hybrid


def test_hybrid_cut_stops_at_the_first_size_the_large_runtime_wins() -> None:
    small = {1: 1.6, 2: 2.5, 4: 4.0, 8: 9.0, 16: 15.0, 32: 70.0}
    large = {1: 3.0, 2: 3.5, 4: 5.0, 8: 8.0, 16: 16.0, 32: 49.0}
    assert hybrid_cut(small, large) == 4  # 16 is a noisy win for small: not taken
    assert hybrid_cut(large, small) == 0


def test_hybrid_trial_takes_each_part_where_it_is_faster() -> None:
    ort = trial("ort", 1.6, 410.0, REF - 0.001, {1: 1.6, 4: 5.0, 32: 78.0})
    ov = trial("ov", 3.0, 650.0, REF + 0.002, {1: 3.0, 4: 6.0, 32: 49.2})
    mixed = hybrid_trial(ort, ov)
    assert mixed is not None
    assert (mixed.cut, mixed.batch1_ms, mixed.full_texts_per_s) == (4, 1.6, 650.0)
    assert mixed.batch_ms == {1: 1.6, 4: 5.0, 32: 49.2}
    assert mixed.intent_accuracy == REF - 0.001  # the worse part's
    verdict = choose([ort, ov, mixed], REF, fallback="ort")
    assert verdict.choice == "hybrid"


def test_no_hybrid_when_one_runtime_wins_everywhere() -> None:
    ort = trial("ort", 1.0, 900.0, batch_ms={1: 1.0, 32: 30.0})
    ov = trial("ov", 3.0, 650.0, batch_ms={1: 3.0, 32: 49.0})
    assert hybrid_trial(ort, ov) is None
    assert hybrid_trial(ov, ort) is None


def test_a_hybrid_with_an_inaccurate_part_is_refused() -> None:
    ort = trial("ort", 1.6, 410.0, batch_ms={1: 1.6, 32: 78.0})
    ov = trial("ov", 3.0, 650.0, REF - 0.01, batch_ms={1: 3.0, 32: 49.2})
    mixed = hybrid_trial(ort, ov)
    assert mixed is not None
    assert choose([ort, ov, mixed], REF, fallback="ort").choice == "ort"


def test_plan_tags_name_the_runtime() -> None:
    assert Plan("onnxruntime", "int8").tag() == "int8"
    assert Plan("openvino", "bf16").tag() == "bf16-openvino"
    assert Plan("hybrid", "int8+bf16", cut=4).tag() == "int8-onnxruntime+bf16-openvino"


# ----------------------------------------------------------------------------- fingerprint, record

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f amx_int8 amx_bf16 avx512_vnni
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f amx_int8 amx_bf16 avx512_vnni
"""


def test_cpu_fingerprint_reads_model_and_sorted_flags_of_the_first_processor() -> None:
    cpu = cpu_fingerprint(CPUINFO)
    assert cpu["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu["flags"] == "amx_bf16 amx_int8 avx2 avx512_vnni avx512f fpu"


def test_another_cpu_or_context_gets_another_key() -> None:
    context = {"revision": "abc", "threads": 2}
    key = record_key(cpu_fingerprint(CPUINFO), context)
    assert key == record_key(cpu_fingerprint(CPUINFO.replace("fpu avx2", "avx2 fpu")), context)
    no_amx = CPUINFO.replace(" amx_int8 amx_bf16", "")
    assert record_key(cpu_fingerprint(no_amx), context) != key
    assert record_key(cpu_fingerprint(CPUINFO), {**context, "threads": 4}) != key
    assert record_key(cpu_fingerprint(CPUINFO), {**context, "revision": "abd"}) != key


def test_this_machines_fingerprint_is_readable() -> None:
    cpu = cpu_fingerprint()
    assert cpu["model"] and cpu["machine"]


def test_record_round_trip_keeps_other_machines_entries(tmp_path: Path) -> None:
    assert read_record(tmp_path, "k1") is None
    assert write_record(tmp_path, "k1", {"choice": "a", "reason": "r1"})
    assert write_record(tmp_path, "k2", {"choice": "b", "reason": "r2"})
    assert read_record(tmp_path, "k1") == {"choice": "a", "reason": "r1"}
    assert read_record(tmp_path, "k2") == {"choice": "b", "reason": "r2"}
    assert set(json.loads((tmp_path / RUNTIME_FILE).read_text())["entries"]) == {"k1", "k2"}


def test_a_broken_record_reads_as_none_and_is_replaced(tmp_path: Path) -> None:
    (tmp_path / RUNTIME_FILE).write_text("{not json")
    assert read_record(tmp_path, "k") is None
    assert write_record(tmp_path, "k", {"choice": "a"})
    assert read_record(tmp_path, "k") == {"choice": "a"}


def test_an_unwritable_directory_keeps_no_record(tmp_path: Path) -> None:
    (tmp_path / RUNTIME_FILE).with_suffix(".tmp").mkdir()  # the temporary file cannot be written
    assert not write_record(tmp_path, "k", {"choice": "a"})
    assert read_record(tmp_path, "k") is None
