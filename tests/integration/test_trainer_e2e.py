"""The trainer side end to end: a real (tiny, CPU) HF Trainer / Lightning loop with tiebreak's callback, a real
tiebreak service (uvicorn + embedded Redis) and a simulated human labelling the checkpoints' runs through the
ordinary run queue. Humans always prefer the base, so after `patience` = 2 checkpoints the signal says
"regression" and training must stop long before max_steps."""

from __future__ import annotations

import httpx
import pytest
import torch
from experiment_server import ADMIN, BackgroundAnnotator, serve_app

from services.trainer import TiebreakClient

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


def _signal(url: str, exp: str) -> dict:
    return httpx.get(f"{url}/v1/experiments/{exp}/signal", headers={"Authorization": f"Bearer {ADMIN}"}).json()


def test_hf_trainer_stops_when_signalled(tmp_path):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from services.trainer import TiebreakTrainerCallback

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
                             per_device_train_batch_size=8, learning_rate=1e-3, report_to=[], use_cpu=True,
                             disable_tqdm=True, logging_steps=10_000, save_only_model=True)
    with serve_app(tmp_path / "redis") as (url, _app):
        exp = _experiment(url)
        client = TiebreakClient(url, exp, token=ADMIN, min_interval=0.0)
        cb = TiebreakTrainerCallback(client, outputs_fn=generate_outputs)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
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


def test_lightning_stops_when_signalled(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from services.trainer import TiebreakLightningCallback

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
        trainer = pl.Trainer(max_steps=MAX_STEPS, callbacks=[ckpt, cb], accelerator="cpu", logger=False,
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
