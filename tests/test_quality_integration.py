"""``loadtest eval`` end to end through a real embedded Triton serving the tiny exported pair."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import typer
from sklearn.metrics import accuracy_score, f1_score
from typer.testing import CliRunner

from loadtest.errors import LoadtestError
from loadtest.quality import commands
from loadtest.quality import results as store
from loadtest.quality.runner import EvalSettings, run_eval
from loadtest.repository import ModelRepository

N = 96


@pytest.fixture(scope="module")
def eval_file(triton_server, tmp_path_factory):
    """A small set over the tiny repository's own labels, with one input past the sequence limit."""
    from _model_fixtures import SENTENCES

    metadata = ModelRepository(triton_server.repository).read_metadata()
    labels = metadata.labels
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(SENTENCES, size=int(rng.integers(1, 4)))) for _ in range(N)]
    texts[5] = " ".join(SENTENCES * 40)  # far beyond max_sequence_length
    frame = pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(N)],
            "text": texts,
            "label": [labels[i % len(labels)] for i in range(N)],
            "channel": rng.choice(["chat", "mail"], N),
            "vip": rng.random(N) < 0.2,
        }
    )
    path = tmp_path_factory.mktemp("evalset") / "eval.parquet"
    frame.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def evaluated(triton_server, eval_file, tmp_path_factory):
    settings = EvalSettings(
        dataset=eval_file,
        host=triton_server.http_url,
        repository=triton_server.repository,
        results=tmp_path_factory.mktemp("results"),
        batch_size=8,
        n_resamples=200,
        show_progress=False,
    )
    return run_eval(settings)


def test_eval_writes_the_quality_contract(evaluated):
    folder = evaluated.run_dir / "quality"
    assert {p.name for p in folder.iterdir()} == {"per_example.parquet", "metrics.csv", "summary.json"}
    assert json.loads((evaluated.run_dir / "manifest.json").read_text())["kind"] == "eval"
    per = store.read_per_example(evaluated.run_dir)
    assert len(per) == N and per["id"].tolist()[:2] == ["q0", "q1"]
    summary = store.read_summary(evaluated.run_dir)
    assert summary["truncated"] == 1 and per.loc[5, "truncated"] and per.loc[5, "n_tokens"] == summary["max_sequence_length"]
    assert {"channel", "vip"} <= {s["name"] for s in summary["slices"]}


def test_served_outputs_are_what_the_onnx_models_compute(evaluated, triton_server):
    """The logits kept per example are the served models' (checked against ONNX Runtime on the files)."""
    import onnxruntime as ort

    repository = ModelRepository(triton_server.repository)
    tokenizer = repository.load_tokenizer()
    per = store.read_per_example(evaluated.run_dir)
    rows = per.iloc[[0, 5, 17]]
    for role in ("teacher", "student"):
        session = ort.InferenceSession(str(repository.model_file(summary_name(evaluated, role))), providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        for _, row in rows.iterrows():
            encoded = tokenizer([row["text"]], truncation=True, max_length=repository.read_metadata().max_sequence_length, return_tensors="np", return_token_type_ids=True, return_attention_mask=True)
            feeds = {k: v.astype(np.int64) for k, v in encoded.items() if k in wanted}
            local = session.run(None, feeds)[0][0]
            np.testing.assert_allclose(np.asarray(row[f"{role}_logits"]), local, rtol=1e-3, atol=1e-4)


def summary_name(evaluated, role):
    return evaluated.summary["models"][role]


def test_metrics_match_an_independent_computation(evaluated):
    per = store.read_per_example(evaluated.run_dir)
    table = store.read_metrics(evaluated.run_dir)
    y = per["label_id"].to_numpy()
    pt, ps = store.stacked(per, "teacher_probs"), store.stacked(per, "student_probs")

    def figure(metric, model="student"):
        return table[(table.metric == metric) & (table.model == model) & (table.slice == "overall")].iloc[0]["value"]

    assert figure("agreement") == pytest.approx(np.mean(pt.argmax(1) == ps.argmax(1)))
    assert figure("accuracy", "teacher") == pytest.approx(accuracy_score(y, pt.argmax(1)))
    assert figure("macro_f1") == pytest.approx(f1_score(y, ps.argmax(1), average="macro"))
    kl = np.mean(np.sum(pt * np.log(np.clip(pt, 1e-12, 1) / np.clip(ps, 1e-12, 1)), axis=1))
    assert figure("kl") == pytest.approx(kl, rel=1e-6)
    assert figure("nonfinite_outputs") == 0


def test_grpc_gives_the_same_outputs(evaluated, triton_server, eval_file, tmp_path):
    settings = EvalSettings(
        dataset=eval_file,
        host=triton_server.grpc_url,
        repository=triton_server.repository,
        results=tmp_path,
        batch_size=16,
        n_resamples=100,
        show_progress=False,
    )
    grpc = run_eval(settings)
    np.testing.assert_allclose(
        store.stacked(grpc.per_example, "student_logits"), store.stacked(evaluated.per_example, "student_logits"), rtol=1e-4, atol=1e-5
    )


def test_cli_eval_into_a_run_dir_then_gate(triton_server, eval_file, tmp_path):
    app = typer.Typer()
    commands.register(app)
    run = tmp_path / "run"
    run.mkdir()
    args = ["eval", "--dataset", str(eval_file), "--host", triton_server.http_url, "--repo", str(triton_server.repository), "--run-dir", str(run), "--bootstrap-resamples", "100"]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert (run / "quality" / "metrics.csv").is_file()
    again = CliRunner().invoke(app, args)
    assert isinstance(again.exception, LoadtestError) and "--overwrite" in str(again.exception)
    policy = tmp_path / "p.yaml"
    policy.write_text("rules:\n  - metric: agreement\n    min: 0.0\n")
    assert CliRunner().invoke(app, ["gate", str(run), "--policy", str(policy)]).exit_code == 0
    policy.write_text("rules:\n  - metric: agreement\n    slice: vip\n    min: 1.01\n")
    failed = CliRunner().invoke(app, ["gate", str(run), "--policy", str(policy)], terminal_width=200)
    assert failed.exit_code == 1 and "vip=True" in failed.output


def test_cli_group_column_and_baseline_through_the_server(evaluated, triton_server, eval_file, tmp_path):
    """A second evaluation of the same frozen set: fairness across 'channel', deltas against the first run, gate."""
    app = typer.Typer()
    commands.register(app)
    args = ["eval", "--dataset", str(eval_file), "--host", triton_server.http_url, "--repo", str(triton_server.repository),
            "--results", str(tmp_path), "--bootstrap-resamples", "100", "--group-column", "channel", "--baseline", str(evaluated.run_dir)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    summary = store.read_summary(run)
    assert summary["fairness"]["column"] == "channel" and set(summary["fairness"]["groups"]) == {"chat", "mail"}
    deltas = pd.read_csv(run / "quality" / "baseline.csv")
    overall = deltas[(deltas.slice == "overall") & (deltas.metric == "accuracy")].iloc[0]
    assert overall["delta"] == 0 and overall["p_value"] == 1.0  # the same served student, the same answers
    policy = tmp_path / "p.yaml"
    policy.write_text("rules:\n  - metric: group_gap_widening\n    max: 1.0\nregression:\n  - metric: accuracy\n    slice: '*'\n    max_worsening: 0.0\n")
    gate = CliRunner().invoke(app, ["gate", str(run), "--policy", str(policy)], terminal_width=200)
    assert gate.exit_code == 0, gate.output
    assert "baseline" in gate.output
    other = tmp_path / "other.parquet"
    pd.read_parquet(eval_file).iloc[::-1].to_parquet(other)  # same rows, another order: not the same frozen set
    refused = CliRunner().invoke(app, [*args[:2], str(other), *args[3:]])
    assert isinstance(refused.exception, LoadtestError) and "different set" in str(refused.exception)


def test_unknown_model_and_unreachable_server_are_one_line_errors(triton_server, eval_file, tmp_path):
    from loadtest.serving.ports import free_port  # a port nobody listens on

    base = dict(dataset=eval_file, repository=triton_server.repository, results=tmp_path, show_progress=False, n_resamples=100)
    with pytest.raises(LoadtestError, match="model 'nope'"):
        run_eval(EvalSettings(host=triton_server.http_url, student="nope", **base))
    with pytest.raises(LoadtestError, match="cannot reach Triton"):
        run_eval(EvalSettings(host=f"http://127.0.0.1:{free_port()}", timeout_s=5, **base))
    assert not list(tmp_path.iterdir())  # nothing half-written
