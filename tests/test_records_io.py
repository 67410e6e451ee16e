"""Record floats keep float32 precision; any byte soup in an input file costs one line, never a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_error_line, run, save_tiny_llama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnrhythm.analyze import maps_to_json
from attnrhythm.records import iter_jsonl, parse_json_line, read_inputs, read_records
from attnrhythm.schema import record_float, record_floats

PROMPT = "Tom has 3 boxes of 12 apples and gives away 10. How many are left?"
RESPONSE = "3 boxes times 12 apples is 36 apples. 36 minus 10 is 26."


# ------------------------------------------------------------------ exact floats


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e-3) | st.floats(min_value=-1e-3, max_value=-1e-6))
def test_small_values_round_trip_within_1e_6_relative(x):
    text = json.dumps(record_floats([x]))
    (back,) = json.loads(text)
    assert abs(back - x) <= 1e-6 * abs(x)
    # at least float32 precision: the float32 value itself comes back
    assert np.float32(back) == np.float32(x)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-3e38, max_value=3e38))
def test_any_float_keeps_float32_precision_in_at_most_9_digits(x):
    (back,) = json.loads(json.dumps(record_floats([x])))
    assert np.float32(back) == np.float32(x)
    digits = repr(back).lower().split("e")[0].replace("-", "").replace(".", "").strip("0")
    assert len(digits) <= 9


def test_nan_is_null_and_short_values_stay_short():
    assert record_floats([math.nan, None, 0.1, 1.5, 0.0]) == [None, None, 0.1, 1.5, 0.0]
    assert record_float(0.00012567) == 0.00012567  # the example: 6 decimals wrote 0.000126


def test_maps_keep_small_values():
    rng = np.random.default_rng(0)
    local = torch.tensor(rng.uniform(1e-6, 1e-3, (4, 4)))
    out = maps_to_json({"span": [0, 4], "local": local, "global": local})
    back = np.asarray(out["local"])
    assert np.allclose(back, local.numpy(), rtol=1e-6, atol=0)


def test_old_six_decimal_records_still_load(tmp_path):
    from test_report import make_record

    from attnrhythm.views.report import render_html

    record = make_record(20)
    record["metrics"]["fai"] = [None if v is None else round(v, 6) for v in record["metrics"]["fai"]]
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (back,) = read_records(path)
    assert back["metrics"]["fai"] == record["metrics"]["fai"]
    assert "ar-t0" in render_html([back])


# ------------------------------------------------------------------ byte soup, unit level


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": NaN}', "not valid JSON"),
        ('{"prompt": 1e999}', "not valid JSON"),
        ('{"prompt": "\\ud800"}', "not valid Unicode"),
        ('{"\\udfff": 1}', "not valid Unicode"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ("1" * 10_000, "not valid JSON"),
    ],
)
def test_parse_json_line_never_raises(line, needle):
    value, why = parse_json_line(line)
    assert value is None and needle in why


def test_read_inputs_reports_each_bad_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b'\xef\xbb\xbf{"prompt": "a", "response": "b c"}\n'  # a BOM on line 1 is fine
        b'{"prompt": "caf\xe9"}\n'  # latin-1, not UTF-8
        b"\xff\xfe\x00garbage\n"
        b'"just a string"\n'
        b'{"prompt": "\\ud83d"}\n'
        b'{"prompt": "ok", "response": 3}\n'
        b'{"prompt": "fine \xf0\x9f\x98\x80"}\n'
    )
    items = read_inputs(src)
    errors = {item.index: item.error for item in items if item.error}
    assert [item.index for item in items if item.error is None] == [1, 7]
    assert "UTF-8" in errors[2] and "UTF-8" in errors[3]
    assert '"prompt"' in errors[4] and "Unicode" in errors[5] and "string" in errors[6]
    assert all(e.startswith(f"line {n}") for n, e in errors.items())


def test_iter_jsonl_skips_unreadable_lines(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"key": "a"}\n\xff\n[1]\n{"key": "b"}\n{"key": "torn')
    assert [r["key"] for r in iter_jsonl(path)] == ["a", "b"]


# ------------------------------------------------------------------ byte soup, through the CLI


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, embedded_dir) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_dir, max_position_embeddings=96)


def _analyze(capsys, tiny_dir, src: Path, out: Path) -> tuple[int, str]:
    code, _, err = run(
        capsys, "analyze", "--model", tiny_dir, "--input", src, "--out", out, "--max-new-tokens", "3",
        "--layers", "all",
    )  # fmt: skip
    return code, err


def _check_no_traceback(code: int, err: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:
        one_error_line(err)
    else:
        assert code in (0, 1), err
        # warning: 3-token responses leave FAI (horizon 10:50) empty, which analyze says
        # (and a progress line when stderr is not a terminal)
        allowed = ("skipped line", "wrote", "warning: FAI", "analysing")
        assert all(line.startswith(allowed) for line in lines), err


def test_non_utf8_file_is_one_line_per_bad_line(capsys, tiny_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    good = json.dumps({"id": "good", "prompt": PROMPT, "response": RESPONSE}).encode()
    src.write_bytes(good + b"\n" + b'{"prompt": "\xe9t\xe9", "response": "x y"}\n' + b"\x80\x81\n")
    out = tmp_path / "out.jsonl"
    code, err = _analyze(capsys, tiny_dir, src, out)
    assert code == 1, err
    assert [r["key"] for r in iter_jsonl(out)] == ["good"]
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and all("UTF-8" in line for line in skipped)
    assert skipped[0].startswith("skipped line 2") and skipped[1].startswith("skipped line 3")


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = st.sampled_from(["prompt", "response", "id", "key", "schema_version", "answer", "generated"])
OBJECTS = st.dictionaries(FIELDS, JSON_VALUES | st.text(max_size=60), max_size=4)
LINES = st.one_of(
    st.binary(max_size=30),
    OBJECTS.map(lambda o: json.dumps(o).encode()),
    OBJECTS.map(lambda o: json.dumps(o, ensure_ascii=False).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, min_size=1, max_size=4))
def test_byte_soup_never_ends_in_a_traceback(capsys, tiny_dir, tmp_path_factory, lines):
    work = tmp_path_factory.mktemp("soup")
    src = work / "in.jsonl"
    src.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    code, err = _analyze(capsys, tiny_dir, src, work / "out.jsonl")
    _check_no_traceback(code, err)
    for record in iter_jsonl(work / "out.jsonl"):
        assert record["schema_version"] == 1 and isinstance(record["key"], str)


def test_reserved_input_fields_do_not_override_the_record(capsys, tiny_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"prompt": PROMPT, "response": RESPONSE, "schema_version": 7, "key": [1]}) + "\n"
    )
    out = tmp_path / "out.jsonl"
    code, err = _analyze(capsys, tiny_dir, src, out)
    assert code == 0, err
    (record,) = list(iter_jsonl(out))
    assert record["schema_version"] == 1 and record["key"].startswith("line1-")


@pytest.mark.parametrize("command", ["report", "figure", "heads"])
def test_record_readers_refuse_non_utf8_in_one_line(capsys, tmp_path, command):
    src = tmp_path / "r.jsonl"
    src.write_bytes(b'{"key": "a"}\n{"key": "\xe9"}\n')
    code, _, err = run(
        capsys, command, src, "--out", tmp_path / ("o.png" if command == "figure" else "o.out")
    )
    assert code != 0
    assert "line 2 is not valid UTF-8" in one_error_line(err)


def test_input_that_is_a_directory_is_one_line(capsys, tiny_dir, tmp_path):
    code, err = _analyze(capsys, tiny_dir, tmp_path, tmp_path / "out.jsonl")
    assert code != 0 and "directory" in one_error_line(err)


def test_command_line_text_that_is_not_utf8_is_one_line(capsys, tiny_dir, tmp_path):
    # a non-UTF-8 byte in argv reaches Python as a lone surrogate (surrogateescape)
    args = ["--prompt", "caf\udce9?", "--response", RESPONSE, "--out", tmp_path / "x.jsonl"]
    code, _, err = run(capsys, "analyze", "--model", tiny_dir, *args)
    assert code != 0 and "--prompt is not valid UTF-8 text (byte 0xe9)" in one_error_line(err)
