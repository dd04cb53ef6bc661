"""Model files and the registry round trip (the promotion gate: tests/test_gate.py)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from damnet import registry
from damnet.models import ChangeNet, preset


def test_model_file_round_trip_and_any_input_size(tmp_path):
    torch.manual_seed(0)
    model = ChangeNet(preset("tiny")).eval()
    registry.save_model(model, str(tmp_path / "m.pt"), region="x")
    loaded, meta = registry.load_model(str(tmp_path / "m.pt"))
    assert meta == {"region": "x"}
    pre = torch.randint(0, 255, (1, 3, 64, 96), dtype=torch.uint8)
    post = torch.randint(0, 255, (1, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(model(pre, post), loaded(pre, post))


def test_a_pickled_object_in_a_model_file_is_refused_not_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("executed!",))

    buf = io.BytesIO()
    torch.save({"model": {}, "model_config": {}, "x": Boom()}, buf, pickle_module=pickle)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(registry.ModelError, match="evil.pt: not a readable model file"):
        registry.load_model(str(tmp_path / "evil.pt"))


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(registry.ModelError, match="no such model file"):
        registry.load_model(str(tmp_path / "nope.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(registry.ModelError, match="other.pt: not a DAM-Net model file"):
        registry.load_model(str(tmp_path / "other.pt"))


def test_registered_model_loads_as_pyfunc_for_any_input_size(tmp_path, mlflow_sqlite):
    import mlflow

    torch.manual_seed(0)
    model = ChangeNet(preset("tiny")).eval()
    registry.save_model(model, str(tmp_path / "m.pt"))
    mlflow.set_experiment("t")
    with mlflow.start_run():
        info = registry.log_model(str(tmp_path / "m.pt"), "damnet-test")
    client = mlflow.MlflowClient()
    registry.record_decision(client, "damnet-test", str(info.registered_model_version),
                             registry.Decision(True, ["first"]))
    assert str(client.get_model_version_by_alias("damnet-test", "champion").version) == "1"
    assert client.get_model_version("damnet-test", "1").tags["damnet.decision"] == "promoted"
    pyfunc = mlflow.pyfunc.load_model("models:/damnet-test@champion")
    for h, w in ((64, 96), (128, 128)):
        rng = np.random.default_rng(h)
        pre = rng.integers(0, 255, (2, 3, h, w), dtype=np.uint8)
        post = rng.integers(0, 255, (2, 3, h, w), dtype=np.uint8)
        prob = pyfunc.predict({"pre": pre, "post": post})
        with torch.no_grad():
            want = model(torch.from_numpy(pre), torch.from_numpy(post)).softmax(1)[:, 1].numpy()
        assert prob.shape == (2, h, w)
        np.testing.assert_allclose(prob, want, atol=1e-5)
    loaded, _ = registry.load_model("models:/damnet-test@champion")
    assert isinstance(loaded, ChangeNet)
    with pytest.raises(registry.ModelError, match="cannot be resolved"):
        registry.load_model("models:/damnet-test@nope")


def _register_and_promote(tmp_path, name: str) -> None:
    import mlflow

    torch.manual_seed(0)
    registry.save_model(ChangeNet(preset("tiny")), str(tmp_path / "m.pt"))
    mlflow.set_experiment("registry-backends")
    client = mlflow.MlflowClient()
    # 20 audit tiles of 100 changed pixels each: a first model finds half, then a worse one a
    # third, then a better one 80 %: promoted, refused (challenger), promoted (no challenger left).
    tiles = {found: {f"t{i}": [found, 10, 100 - found, 3986] for i in range(20)} for found in (50, 33, 80)}
    aliases = []
    for found in (50, 33, 80):
        with mlflow.start_run():
            info = registry.log_model(str(tmp_path / "m.pt"), name)
        champion = registry.alias_version(client, name, registry.CHAMPION)
        decision = registry.gate({"audit_f1": 0.5, "source_f1": 0.9, "audit_confusions": tiles[found]},
                                 None if champion is None else {"audit_f1": 0.5, "audit_confusions": tiles[50]}, 0.9)
        registry.record_decision(client, name, str(info.registered_model_version), decision)
        aliases.append(tuple(getattr(registry.alias_version(client, name, a), "version", None)
                             for a in (registry.CHAMPION, registry.CHALLENGER)))
        if found == 33:
            assert [str(v) for v in aliases[1]] == ["1", "2"]  # the refused one is the challenger
    assert [tuple(map(str, a)) for a in aliases] == [("1", "None"), ("1", "2"), ("3", "None")]
    assert client.get_model_version(name, "2").tags["damnet.decision"] == "rejected"
    assert client.get_model_version(name, "1").tags["damnet.audit_tiles"] == "20"
    assert client.get_model_version(name, "2").tags["damnet.audit_f1_gain_ci"].startswith("-")
    model, _ = registry.load_model(f"models:/{name}@champion")
    assert isinstance(model, ChangeNet)


def test_registry_on_postgresql(tmp_path, postgres_url, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", postgres_url)
    mlflow.set_tracking_uri(postgres_url)
    try:
        _register_and_promote(tmp_path, "damnet-pg")
    finally:
        mlflow.set_tracking_uri(None)


def test_registry_on_an_mlflow_server_with_s3_artifacts(tmp_path, mlflow_server, s3_endpoint, monkeypatch):
    import boto3
    import mlflow

    uri, bucket = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        _register_and_promote(tmp_path, "damnet-server")
    finally:
        mlflow.set_tracking_uri(None)
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                                           aws_access_key_id="testing", aws_secret_access_key="testing")
            .list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith("model.pt") for k in keys), keys[:5]
