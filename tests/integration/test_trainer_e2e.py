"""The trainer side end to end: a real (tiny, CPU) HF Trainer / Lightning loop with tiebreak's callback, a real
tiebreak service (uvicorn + embedded Redis) and a simulated human labelling the checkpoints' runs through the
ordinary run queue. Humans always prefer the base, so after `patience` = 2 checkpoints the signal says
"regression" and training must stop long before max_steps. Both loops also write a real TensorBoard event file
(HF: report_to=["tensorboard"]; Lightning: TensorBoardLogger), read back with the tensorboard package's reader:
the tiebreak/* scalars the callback logged through the trainer's own logging are in it."""

from __future__ import annotations

import httpx
import pytest
import torch
from experiment_server import ADMIN, BackgroundAnnotator, serve_app

from tiebreak.services.trainer import TiebreakClient

pytestmark = pytest.mark.integration

N_PROMPTS = 6
MAX_STEPS = 3000
PROMPT_IDS = {f"q{i}": [1 + i, 7, 11 + 2 * i] for i in range(N_PROMPTS)}


def prefer_base(left: str, right: str) -> str:
    return "left" if left.startswith("base:") else "right"


def _experiment(url: str) -> str:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        r = c.post("/v1/experiments", json={
            "name": "tiny", "judges": [], "patience": 2, "alpha": 0.05,
            "prompts": [{"id": k, "text": " ".join(map(str, v))} for k, v in PROMPT_IDS.items()],
            "base": {"outputs": {k: f"base: {k}" for k in PROMPT_IDS}}})
        r.raise_for_status()
        return r.json()["experiment"]


def _scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``logdir``: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for d in sorted({p.parent for p in logdir.rglob("events.out.tfevents.*")}):
        ea = EventAccumulator(str(d), size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return out


def _check_tensorboard(scalars: dict, prefix: str, logged: list[dict], sig: dict, stopped_at: int) -> None:
    """The event file holds exactly the rows the callback logged, and they agree with the server's signal."""
    from tiebreak.services.trainer import DECISION_CODES, METRIC_KEYS

    assert {prefix + k for k in METRIC_KEYS} <= set(scalars), sorted(scalars)
    rows = [r for r in logged if r["checkpoint"] is not None]
    assert rows, logged
    for key in ("tiebreak/theta_vs_base", "tiebreak/lower", "tiebreak/upper", "tiebreak/labels", "tiebreak/decision"):
        want = [(r["step"], pytest.approx(r[key], abs=1e-6)) for r in rows]
        assert scalars[prefix + key] == want, key
    for (_, th), (_, lo), (_, hi) in zip(*(scalars[prefix + k] for k in ("tiebreak/theta_vs_base", "tiebreak/lower",
                                                                         "tiebreak/upper")), strict=True):
        assert lo - 1e-6 <= th <= hi + 1e-6
    # the stop: logged at the step training stopped, as 1 with reason "regression" (code 2)
    assert scalars[prefix + "tiebreak/stop"][-1] == (stopped_at, 1.0)
    assert scalars[prefix + "tiebreak/stop_reason"][-1] == (stopped_at, 2.0)
    # the first checkpoint's last row is its final verdict, the same the server reports
    final = next(c for c in sig["checkpoints"] if c["checkpoint"] == rows[0]["checkpoint"])
    last = [r for r in rows if r["checkpoint"] == final["checkpoint"]][-1]
    assert last["tiebreak/decision"] == DECISION_CODES[final["decision"]] == DECISION_CODES["worse"]
    assert last["tiebreak/theta_vs_base"] == pytest.approx(final["vs_base"]["estimate"])
    assert last["tiebreak/upper"] == pytest.approx(final["vs_base"]["upper"]) and last["tiebreak/upper"] <= 0.5


def _signal(url: str, exp: str) -> dict:
    return httpx.get(f"{url}/v1/experiments/{exp}/signal", headers={"Authorization": f"Bearer {ADMIN}"}).json()


def test_hf_trainer_stops_when_signalled(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from tiebreak.services.trainer import TiebreakTrainerCallback

    def generate_outputs(path: str) -> dict[str, str]:
        """Really load the saved checkpoint and generate (greedy) for every prompt."""
        m = AutoModelForCausalLM.from_pretrained(path).eval()
        out = {}
        with torch.no_grad():
            for k, ids in PROMPT_IDS.items():
                g = m.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=0)
                out[k] = f"{path.rsplit('/', 1)[-1]}: " + " ".join(map(str, g[0, len(ids):].tolist()))
        return out

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    data = [{"input_ids": x, "labels": x} for x in torch.randint(0, 100, (64, 16))]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=MAX_STEPS, save_steps=5,
                             per_device_train_batch_size=8, learning_rate=1e-3, report_to=["tensorboard"], use_cpu=True,
                             disable_tqdm=True, logging_steps=10_000, save_only_model=True)
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))   # transformers' TensorBoardCallback
    with serve_app(tmp_path / "redis") as (url, _app):
        exp = _experiment(url)
        client = TiebreakClient(url, exp, token=ADMIN, min_interval=0.0)
        cb = TiebreakTrainerCallback(client, outputs_fn=generate_outputs)
        trainer = cb.attach(Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]))
        with BackgroundAnnotator(url, exp, prefer_base) as ann:
            trainer.train()
        sig = _signal(url, exp)
        client.close()
    assert not ann.errors and not client.errors, (ann.errors, client.errors)
    print(f"HF Trainer stopped at step {trainer.state.global_step} of {MAX_STEPS}: {sig['message']}")
    assert cb.stopped_at is not None and cb.reason == "regression"
    assert trainer.state.global_step < MAX_STEPS
    assert trainer.state.global_step == cb.stopped_at
    assert sig["stop"] and sig["reason"] == "regression" and sig["best_checkpoint"] is None
    assert [c["checkpoint"] for c in sig["checkpoints"]][:2] == ["checkpoint-5", "checkpoint-10"]
    assert all(c["vs_base"]["decision"] in ("worse", "running") for c in sig["checkpoints"])
    assert ann.labels >= 2 * N_PROMPTS // 2
    _check_tensorboard(_scalars(tmp_path / "tb"), "train/", cb.logged, sig, cb.stopped_at)
    assert any(h.get("tiebreak/stop") == 1.0 for h in trainer.state.log_history)   # Trainer.log's own record


def test_lightning_stops_when_signalled(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from tiebreak.services.trainer import TiebreakLightningCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(100, 16)
            self.out = torch.nn.Linear(16, 100)

        def forward(self, x):
            return self.out(self.emb(x))

        def training_step(self, batch, i):
            (x,) = batch
            return torch.nn.functional.cross_entropy(self(x[:, :-1]).reshape(-1, 100), x[:, 1:].reshape(-1))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-3)

    def generate_outputs(path: str) -> dict[str, str]:
        m = Tiny.load_from_checkpoint(path).eval()
        with torch.no_grad():
            return {k: f"{path.rsplit('/', 1)[-1]}: " + " ".join(map(str, m(torch.tensor([ids])).argmax(-1)[0].tolist()))
                    for k, ids in PROMPT_IDS.items()}

    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randint(0, 100, (64, 16)))
    dl = torch.utils.data.DataLoader(ds, batch_size=8)
    with serve_app(tmp_path / "redis") as (url, _app):
        exp = _experiment(url)
        client = TiebreakClient(url, exp, token=ADMIN, min_interval=0.0)
        cb = TiebreakLightningCallback(client, outputs_fn=generate_outputs)
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
        trainer = pl.Trainer(max_steps=MAX_STEPS, callbacks=[ckpt, cb], accelerator="cpu",
                             logger=TensorBoardLogger(tmp_path / "tb", name="tiny"),
                             enable_progress_bar=False, enable_model_summary=False)
        with BackgroundAnnotator(url, exp, prefer_base) as ann:
            trainer.fit(Tiny(), dl)
        sig = _signal(url, exp)
        client.close()
    assert not ann.errors and not client.errors, (ann.errors, client.errors)
    print(f"Lightning stopped at step {trainer.global_step} of {MAX_STEPS}: {sig['message']}")
    assert cb.stopped_at is not None
    assert trainer.global_step < MAX_STEPS
    assert sig["stop"] and sig["reason"] == "regression"
    assert len(sig["checkpoints"]) >= 2
    _check_tensorboard(_scalars(tmp_path / "tb"), "", cb.logged, sig, cb.stopped_at)
