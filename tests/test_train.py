"""The training engine: learning, resume after a kill, DDP agreement, divergence, streams."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from damnet.checkpoint import CHECKPOINT, load_checkpoint, load_weights
from damnet.data import Stream, TileSet
from damnet.errors import DamnetError
from damnet.models import ChangeNet, preset
from damnet.train import TrainingDiverged, fit, mode_config

JOB = str(Path(__file__).with_name("_train_job.py"))
SMALL = {"dims": (16, 32, 64, 128), "decoder_dim": 16}


def _model(seed=0):
    torch.manual_seed(seed)
    return ChangeNet(preset("tiny", **SMALL))


def test_supervised_training_lowers_the_loss(tiny_regions):
    src = TileSet(tiny_regions["source"])
    cfg = mode_config("supervised", steps=120, batch_size=4, crop=64, log_every=20, lr=2e-3)
    result = fit(_model(), cfg, source=Stream(src, 4, 64, 0, "source"), progress=False)
    first, last = result.history[0]["seg_source"], result.history[-1]["seg_source"]
    assert last < 0.7 * first


def test_adaptation_runs_both_sides(tiny_regions):
    src, tgt = TileSet(tiny_regions["source"]), TileSet(tiny_regions["target"], labels=None)
    cfg = mode_config("adapt", steps=6, batch_size=2, crop=64, adv_start=2, adv_ramp=2,
                      lambda_adv=0.01, log_every=1, disc_input="softmax+entropy")
    result = fit(_model(), cfg, source=Stream(src, 2, 64, 0, "s"), target=Stream(tgt, 2, 64, 0, "t"),
                 progress=False)
    lams = [h["lambda_adv"] for h in result.history]
    assert lams == [0.0, 0.0, 0.005, 0.01, 0.01, 0.01]
    assert all("disc" in h for h in result.history[2:]) and "adv" in result.history[3]
    assert "adv" not in result.history[0] and "disc" not in result.history[0]


def test_missing_streams_and_labels_are_clear_errors(tiny_regions):
    src_unlabelled = TileSet(tiny_regions["source"], labels=None)
    with pytest.raises(DamnetError, match="needs the stream"):
        fit(_model(), mode_config("adapt"), source=Stream(src_unlabelled, 2, 64), progress=False)
    with pytest.raises(DamnetError, match="anchor_on must be"):
        fit(_model(), mode_config("finetune", anchor_on="some"), source=Stream(TileSet(tiny_regions["source"]), 2, 64),
            micro=Stream(TileSet(tiny_regions["source"]), 2, 64), target=Stream(src_unlabelled, 2, 64),
            progress=False)
    with pytest.raises(DamnetError, match="without labels"):
        fit(_model(), mode_config("supervised"), source=Stream(src_unlabelled, 2, 64),
            progress=False)


def _run_job(tiny_regions, out, steps, kill_after_step=None):
    cmd = [sys.executable, JOB, tiny_regions["source"], tiny_regions["target"], str(out), str(steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if kill_after_step is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
        return
    deadline = time.time() + 300
    ckpt = out / CHECKPOINT
    while time.time() < deadline:
        # Never half-written; the name may be swapped under us by os.replace, hence suppress.
        with contextlib.suppress(Exception):
            if ckpt.exists() and load_checkpoint(str(ckpt))["step"] >= kill_after_step:
                break
        if proc.poll() is not None:
            pytest.fail("the job finished before it could be killed")
        time.sleep(0.05)
    proc.kill()  # like a preempted pod: no clean-up
    proc.wait()
    assert load_checkpoint(str(ckpt))["step"] < steps


def test_killed_run_resumes_to_the_same_result(tiny_regions, tmp_path):
    steps = 16
    _run_job(tiny_regions, tmp_path / "straight", steps)
    _run_job(tiny_regions, tmp_path / "killed", steps, kill_after_step=4)
    _run_job(tiny_regions, tmp_path / "killed", steps)
    a = torch.load(tmp_path / "straight" / "final-rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "final-rank0.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert load_checkpoint(str(tmp_path / "killed" / CHECKPOINT))["step"] == steps


def test_resume_refuses_another_configuration(tiny_regions, tmp_path):
    src = TileSet(tiny_regions["source"])
    cfg = mode_config("supervised", steps=2, batch_size=2, crop=64)
    fit(_model(), cfg, source=Stream(src, 2, 64), out_dir=tmp_path, progress=False)
    with pytest.raises(DamnetError, match="checkpoint was made with steps=2"):
        fit(_model(), mode_config("supervised", steps=3, batch_size=2, crop=64),
            source=Stream(src, 2, 64), out_dir=tmp_path, progress=False)


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed beside this Python")
def test_ddp_ranks_end_with_identical_weights(tiny_regions, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", JOB, tiny_regions["source"],
           tiny_regions["target"], str(tmp_path), "4", "--ddp"]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    r0 = torch.load(tmp_path / "final-rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "final-rank1.pt", weights_only=True)
    init = _model().state_dict()
    assert any(not torch.equal(r0[k], init[k]) for k in r0)  # it trained
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tiny_regions, tmp_path):
    src = TileSet(tiny_regions["source"])
    cfg = mode_config("supervised", steps=200, batch_size=2, crop=64, lr=1e9, warmup=0.0,
                      grad_clip=0.0, checkpoint_every=1)
    with pytest.raises(TrainingDiverged, match="last good checkpoint is kept"):
        fit(_model(), cfg, source=Stream(src, 2, 64), out_dir=tmp_path, progress=False)
    state = load_checkpoint(str(tmp_path / CHECKPOINT))
    assert 0 < state["step"] < 200
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_streams_are_reproducible_and_split_between_ranks(tiny_regions):
    s = Stream(TileSet(tiny_regions["source"]), 2, 32, seed=3, name="source")
    a, b = s.batch(5), s.batch(5)
    assert torch.equal(a.pre, b.pre) and torch.equal(a.label, b.label)
    assert not torch.equal(s.batch(6).pre, a.pre)
    both = Stream(TileSet(tiny_regions["source"]), 4, 32, seed=3, name="source")
    whole = both.batch(5)
    r0, r1 = both.batch(5, rank=0, world=1), None
    half = Stream(TileSet(tiny_regions["source"]), 2, 32, seed=3, name="source")
    r0, r1 = half.batch(5, rank=0, world=2), half.batch(5, rank=1, world=2)
    assert torch.equal(torch.cat([r0.pre, r1.pre]), whole.pre)
    assert a.pre.shape == (2, 3, 32, 32) and a.label.shape == (2, 32, 32)


def test_mae_pretraining_is_its_own_step_and_its_encoder_loads_elsewhere(tiny_regions, tmp_path):
    both = TileSet(tiny_regions["target"], labels=None)
    model = _model()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    cfg = mode_config("pretrain", steps=4, batch_size=2, crop=64, log_every=2)
    result = fit(model, cfg, unlabelled=Stream(both, 2, 64, name="mae"), out_dir=tmp_path,
                 progress=False)
    assert all("mae" in h and "seg_source" not in h for h in result.history)
    assert any(not torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    fresh = _model(seed=1)
    load_weights(fresh, str(tmp_path / CHECKPOINT), part="encoder")
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(fresh.encoder.state_dict()[k], v)
    torch.save(model.encoder.state_dict(), tmp_path / "encoder.pt")
    other = _model(seed=2)
    load_weights(other, str(tmp_path / "encoder.pt"), part="encoder")
    assert torch.equal(other.encoder.stem[0].weight, model.encoder.stem[0].weight)
    with pytest.raises(DamnetError, match="do not fit"):
        load_weights(ChangeNet(preset("tiny")), str(tmp_path / CHECKPOINT))


def test_checkpoints_never_unpickle_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(Exception, match="(?i)weights only|unpickl"):
        load_checkpoint(str(tmp_path / "evil.pt"))


def test_same_seed_same_run_whatever_the_caller_did_before(tiny_regions):
    src, tgt = TileSet(tiny_regions["source"]), TileSet(tiny_regions["target"], labels=None)
    cfg = mode_config("adapt", steps=3, batch_size=2, crop=64, lambda_adv=0.01, log_every=1)
    runs = []
    for noise in (0, 1):
        model = _model()
        torch.manual_seed(1234 + noise)  # the caller's RNG state differs between the runs
        result = fit(model, cfg, source=Stream(src, 2, 64, name="s"),
                     target=Stream(tgt, 2, 64, name="t"), progress=False)
        runs.append((model.state_dict(), result.discriminator.state_dict()))
    for a, b in zip(runs[0], runs[1], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_photometric_jitter_changes_each_date_on_its_own_and_stays_in_range():
    from damnet.train import photometric_jitter

    x = torch.full((4, 3, 8, 8), 128, dtype=torch.uint8)
    assert torch.equal(photometric_jitter(x, 0.0), x.float() / 255)  # off: just the 0..1 input
    torch.manual_seed(0)
    y = photometric_jitter(x, 1.0)
    assert y.shape == x.shape and y.dtype == torch.float32 and y.min() >= 0 and y.max() <= 1
    means = y.mean(dim=(2, 3))
    assert len({tuple(m.round(decimals=3).tolist()) for m in means}) == 4  # every image draws its own
    assert (means - 128 / 255).abs().max() > 0.02  # and it really shifts the radiometry
    torch.manual_seed(0)
    assert torch.equal(photometric_jitter(x, 1.0), y)  # seeded: resumable, reproducible


def test_pseudo_labels_are_class_balanced_and_skip_unsure_pixels():
    from damnet.losses import pseudo_loss

    teacher = torch.zeros(1, 2, 10, 10)
    teacher[:, 0] = 5.0  # confident background everywhere ...
    teacher[0, :, 0, 0] = torch.tensor([-5.0, 5.0])  # ... but one confident change pixel
    teacher[0, :, 9, 9] = 0.0  # and one unsure pixel (p = 0.5): no pseudo-label
    valid = torch.ones(1, 10, 10, dtype=torch.bool)
    says_nothing = torch.zeros(1, 2, 10, 10)
    says_nothing[:, 0] = 5.0
    # One change pixel among 98 background ones still weighs half of the loss: predicting no
    # change everywhere is expensive, which is what keeps self-training from collapsing.
    loss = pseudo_loss(says_nothing, teacher, valid, 0.9)
    assert loss > 0.5 * 5.0
    agrees = teacher.clone()
    agrees[0, :, 9, 9] = torch.tensor([-5.0, 5.0])  # the unsure pixel does not count either way
    assert pseudo_loss(agrees, teacher, valid, 0.9) < 0.01
    nothing_sure = torch.zeros(1, 2, 10, 10)
    assert pseudo_loss(says_nothing, nothing_sure, valid, 0.9) == 0


def test_change_prior_is_zero_at_the_source_share_and_grows_towards_an_empty_map():
    from damnet.data import Batch
    from damnet.losses import change_prior

    label = torch.zeros(1, 10, 10, dtype=torch.long)
    label[0, :1] = 1  # 10 % change in the source batch
    ones = torch.ones(1, 10, 10, dtype=torch.bool)
    src = Batch(label, label, label, ones, torch.zeros(1))

    def logits_with_share(share):
        p = torch.full((1, 10, 10), share)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)

    at = change_prior(logits_with_share(0.10), ones, src)
    assert abs(float(at)) < 1e-5
    values = [float(change_prior(logits_with_share(s), ones, src)) for s in (0.05, 0.01, 0.001)]
    assert values == sorted(values) and values[-1] > 0.1


def test_self_training_resumes_with_its_teacher_and_anchor(tiny_regions, tmp_path):
    src, tgt = TileSet(tiny_regions["source"]), TileSet(tiny_regions["target"], labels=None)
    cfg = mode_config("adapt", steps=4, batch_size=2, crop=64, log_every=1, checkpoint_every=2,
                      pseudo_weight=1.0, pseudo_threshold=0.5, prior_weight=1.0, photometric=0.5,
                      ema_decay=0.5, anchor_weight=1.0)

    def run(out, stop_after=None):
        def on_log(step, metrics):
            if stop_after is not None and step > stop_after:
                raise KeyboardInterrupt

        model = _model()
        with contextlib.suppress(KeyboardInterrupt):
            fit(model, cfg, source=Stream(src, 2, 64, 0, "s"), target=Stream(tgt, 2, 64, 0, "t"),
                out_dir=out, on_log=on_log, progress=False)
        return model

    whole = run(tmp_path / "whole")
    state = load_checkpoint(str(tmp_path / "whole" / CHECKPOINT))
    assert {"pseudo", "prior", "anchor"} <= set(state["history"][-1])
    assert "teacher" in state and "anchor" in state
    run(tmp_path / "killed", stop_after=2)
    assert load_checkpoint(str(tmp_path / "killed" / CHECKPOINT))["step"] == 2
    resumed = run(tmp_path / "killed")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_anchor_is_zero_at_the_starting_model_and_grows_as_the_maps_part():
    from damnet.losses import anchor_loss

    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8)
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    assert float(anchor_loss(logits, logits, valid)) == pytest.approx(0.0, abs=1e-6)
    flipped = logits.flip(1)  # the other class everywhere
    assert float(anchor_loss(flipped, logits, valid)) > 0.1
    # pixels outside the valid mask do not count
    half = valid.clone()
    half[:, :, 4:] = False
    mixed = torch.where(half[:, None], logits, flipped)
    assert float(anchor_loss(mixed, logits, half)) == pytest.approx(0.0, abs=1e-6)
    # on="change": only the pixels the anchor calls change hold the model
    calls_change = logits[:, 1] > logits[:, 0]
    drifted = torch.where(calls_change[:, None], logits, flipped)  # every "no change" pixel moved
    assert float(anchor_loss(drifted, logits, valid, on="change")) == pytest.approx(0.0, abs=1e-6)
    assert float(anchor_loss(drifted, logits, valid)) > 0.05


def test_anchored_finetuning_keeps_the_map_of_the_model_it_starts_from(tiny_regions):
    """MLFT on one tile without change: the anchor keeps the predicted change elsewhere (the
    collapse the real-imagery benchmark showed), where plain fine-tuning lets it drain away."""
    src, tgt = TileSet(tiny_regions["source"]), TileSet(tiny_regions["target"])
    quiet = [i for i, t in enumerate(tgt.tiles) if not t["change_fraction"]][:1]
    assert quiet, "the tiny target region needs a tile without change"
    start = _model()
    fit(start, mode_config("supervised", steps=60, batch_size=4, crop=64, lr=2e-3),
        source=Stream(src, 4, 64, 0, "s"), progress=False)

    def predicted_change(model):
        with torch.no_grad():
            return sum(float((model(b.pre, b.post).softmax(1)[:, 1] >= 0.5).float().mean())
                       for b in tgt.iter_batches(8))

    def finetuned(anchor_weight, quiet_anchor_weight=0.0, micro=quiet):
        model = copy.deepcopy(start)
        cfg = mode_config("finetune", steps=30, batch_size=4, crop=64, lr=2e-3, lambda_adv=0.0,
                          source_weight=0.0, anchor_weight=anchor_weight, quiet_anchor_weight=quiet_anchor_weight)
        unlabelled = tgt.subset(range(len(tgt)), labels=None)
        fit(model, cfg, micro=Stream(tgt.subset(micro), 4, 64, 0, "m"),
            target=Stream(unlabelled, 4, 64, 0, "t"), progress=False)
        return predicted_change(model)

    before = predicted_change(start)
    assert before > 0
    plain, anchored = finetuned(0.0), finetuned(5.0)
    assert plain < 0.5 * before  # taught only "no change": the map drains
    assert anchored > 2 * plain and anchored > 0.5 * before
    # quiet_anchor_weight: the anchor's weight when no micro label marks change, and only then
    assert finetuned(0.2, quiet_anchor_weight=5.0) == anchored
    busy = [i for i, t in enumerate(tgt.tiles) if t["change_fraction"]][:1]
    assert tgt.subset(busy).any_change() and not tgt.subset(quiet).any_change()
    assert finetuned(0.2, 5.0, micro=busy) == finetuned(0.2, micro=busy) != finetuned(5.0, micro=busy)
    assert mode_config("finetune").quiet_anchor_weight > mode_config("finetune").anchor_weight


def test_histogram_matching_gives_each_band_the_reference_values_and_keeps_pixel_order():
    from damnet.train import match_histograms, restyle_pairs

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    ref = torch.rand(2, 3, 16, 16, generator=g) ** 3  # a darker, skewed "target sensor"
    y = match_histograms(x, ref)
    flat = lambda t: t.reshape(2, 3, -1)  # noqa: E731
    assert torch.equal(flat(y).sort(-1).values, flat(ref).sort(-1).values)
    order = flat(x).argsort(dim=-1)
    assert (flat(y).gather(-1, order).diff(dim=-1) >= 0).all()  # monotone: edges stay edges
    # p = 0 leaves the pair alone; p = 1 restyles each date from its own date of the reference
    same = restyle_pairs(x, x, ref, ref.flip(0), 0.0)
    assert torch.equal(same[0], x) and torch.equal(same[1], x)
    pre, post = restyle_pairs(x, x, ref, ref.flip(0), 1.0)
    assert torch.equal(flat(pre).sort(-1).values, flat(ref).sort(-1).values)
    assert torch.equal(flat(post).sort(-1).values, flat(ref.flip(0)).sort(-1).values)


def test_source_batches_can_be_resampled_to_a_coarser_target_gsd(tiny_regions, tmp_path, caplog):
    import logging

    from torch.nn import functional as F

    from damnet.data import gsd_ratio
    from damnet.synthetic import write_region
    from damnet.tiling import TilingConfig, ingest

    write_region(str(tmp_path / "raw"), "target_resolution", n_scenes=1, size=128, seed=2)
    ingest(str(tmp_path / "raw"), str(tmp_path / "coarse"), TilingConfig(size=64, require_labels=True))
    src, coarse = TileSet(tiny_regions["source"]), TileSet(str(tmp_path / "coarse"))
    assert gsd_ratio(src, coarse) == pytest.approx(1.2 / 0.5)
    assert gsd_ratio(coarse, src) == pytest.approx(0.5 / 1.2)
    degrees = src.subset(range(len(src)))
    degrees.tiles = [{**t, "crs": "EPSG:4326"} for t in src.tiles]
    assert gsd_ratio(src, degrees) == 1.0  # pixel sizes in degrees are not metres: leave alone
    degrees.tiles = [{**t, "crs": None} for t in src.tiles]
    assert gsd_ratio(src, degrees) == 1.0  # nor are those of images without a CRS (PNGs)

    # scale 2 draws the same 32 px windows as a plain 32 px stream and area-averages them to 16 px
    plain = Stream(src, 3, 32, seed=1, name="source", augment=False).batch(4)
    zoomed = Stream(src, 3, 16, seed=1, name="source", augment=False, scale=2).batch(4)
    assert zoomed.pre.shape == (3, 3, 16, 16) and zoomed.pre.dtype == torch.uint8
    assert torch.equal(zoomed.pre, F.avg_pool2d(plain.pre.float(), 2).round().to(torch.uint8))
    pooled = F.avg_pool2d(plain.label[:, None].float(), 2)[:, 0]
    assert torch.equal(zoomed.label, (pooled >= 0.5).long())
    assert torch.equal(zoomed.valid, F.avg_pool2d(plain.valid[:, None].float(), 2)[:, 0] == 1)
    assert Stream(src, 2, 16, scale=10).batch(0).pre.shape[-1] == 16  # capped by the 64 px tile
    with pytest.raises(ValueError, match="crop"):
        Stream(src, 2, None, scale=2)

    cfg = mode_config("adapt", steps=1, batch_size=2, crop=32, match_gsd=True)
    with caplog.at_level(logging.INFO, logger="damnet.train"):
        fit(_model(), cfg, source=Stream(src, 2, 32, name="s"), target=Stream(coarse, 2, 32, name="t"),
            progress=False)
    assert "ground sample distance (x2.40)" in caplog.text
    assert "x2.00 where the tile size caps the window" in caplog.text  # 64 px tiles, 32 px crops
