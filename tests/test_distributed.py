"""Training and evaluation as 2 CPU processes under ``accelerate launch`` (gloo), against one
process: the same recipe (the configured batch is the global batch), files written once, the
saved models usable, and sharded evaluation equal to one process's to the last digit; and the
same recipe under FSDP full sharding, launched with the example accelerate config file, on GPT-2,
T5 and a tiny Gemma 3 (LoRA and full tuning), and under DeepSpeed ZeRO-3 where DeepSpeed is installed."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cyclic_data
from test_pretrained import tiny_gemma  # the tests' tiny Gemma 3 (two blocks: two FSDP units)

HERE = Path(__file__).parent
FSDP_CONFIG = HERE.parent / "examples" / "accelerate" / "fsdp.yaml"

# Dropout off, so that 1 and 2 processes compute the same function: with it on, each process
# draws its own masks and the runs agree only in distribution.
JOB = {
    "recommender": "p5",
    "params": {
        "model": {"preset": "tiny", "backbone": "gpt2", "dropout": 0.0},
        "index": {"method": "random", "params": {"levels": 1}},
        "tasks": {"weights": {"sequential": 1.0}},
        "train": {"epochs": 2, "batch_size": 8, "val_users": 10, "patience": 5},
        "eval": {"unconstrained_users": 0},
    },
    # 33 users in batches of 16: the last batch has one example, so one process's slice is empty.
    "compare": [
        {"recommender": "sasrec", "params": {
            "hidden": 16, "blocks": 1, "max_len": 8, "dropout": 0.0, "batch_size": 16, "epochs": 3,
            "lr": 0.01, "seed": 3,
        }},
    ],
}
# Same recipe, different reduction order (a sum of two slices' gradients against one sum, the
# slices padded to their own lengths): a few Adam steps keep the losses this close (measured
# differences are near 1e-7 relative).
LOSS_TOLERANCE = 1e-4
# The trained weights of two such runs (measured: 2e-6 at most).
WEIGHT_TOLERANCE = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_env() -> dict[str, str]:
    # Read at each launch: tests set variables (monkeypatch) that the launched processes need.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _multi_gpu_launch(processes: int, port: str, machines: int = 1, machine_rank: int = 0) -> list[str]:
    """``accelerate launch --multi_gpu`` for ``processes`` processes in all over ``machines``
    machines (all on loopback), before the script and its arguments."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", str(machines), "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
    ]


def _run(args: list[str], processes: int, config: Path | None = None) -> subprocess.CompletedProcess:
    """``args`` run by python, or by ``accelerate launch`` as ``processes`` processes, with the
    accelerate ``config`` file if given. accelerate starts N CPU processes under ``--cpu`` only
    through MPI; ``--multi_gpu`` (or a config file without ``use_cpu``) starts them through torchrun
    on any machine, and promptrec opens a gloo group between them when there is no GPU."""
    if processes == 1:
        command = [sys.executable, *args]
    elif config is not None:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--num_processes", str(processes), "--main_process_port", str(_free_port()), *args,
        ]
    else:
        command = [*_multi_gpu_launch(processes, str(_free_port())), *args]
    done = subprocess.run(command, env=_launch_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch")
    events = tmp / "events.csv"
    cyclic_data(n_users=33, n_items=20).interactions.to_csv(events, index=False)
    job = tmp / "job.yaml"
    job.write_text(yaml.safe_dump(JOB))
    train = ["-m", "promptrec.cli", "train", "-c", str(job), "--loader", "tabular", "--data", str(events)]
    for processes in (1, 2):
        _run([*train, "-o", str(tmp / f"p{processes}")], processes)
    return tmp, events


@pytest.mark.parametrize("name", ["model", "sasrec"])
def test_two_processes_train_the_one_process_recipe(runs, name):
    tmp, _ = runs
    one, two = (json.loads((tmp / f"p{n}" / "metrics.json").read_text())[name] for n in (1, 2))
    assert (one["processes"], two["processes"]) == (1, 2)
    steps = "steps" if name == "model" else "epochs_run"
    assert one[steps] == two[steps] > 1
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=LOSS_TOLERANCE)
    # Same weights, so the same rankings: the test metrics of the two runs agree.
    assert two["NDCG@10"] == pytest.approx(one["NDCG@10"], abs=1e-6)


def test_saved_models_load_and_shard_evaluation_exactly(runs):
    tmp, events = runs
    out = tmp / "sharded.json"
    _run([str(HERE / "sharded_evaluation.py"), str(tmp / "p2"), str(events), str(out)], 2)
    report = json.loads(out.read_text())
    assert report["processes"] == 2
    for name in ("model", "sasrec"):
        result = report[name]
        assert result["eval_users"] == 33
        # Each process asked for its own block of whole batches of 7: 14 users, then 19.
        assert result["asked"] == [14, 19]
        assert result["sharded"] == result["alone"]  # to the last digit
        assert result["per_user_equal"]
        assert len(result["recommendation"]) == 3


def test_two_processes_resume_from_their_checkpoint(runs):
    tmp, _ = runs
    run = tmp / "p2"
    first = json.loads((run / "metrics.json").read_text())["model"]
    done = _run(["-m", "promptrec.cli", "train", "-c", str(run / "config.yaml"), "--resume",
                 "--set", "train.epochs=3", "-o", str(run)], 2)
    resumed = json.loads((run / "metrics.json").read_text())["model"]
    # One more epoch after the two the checkpoint holds: its steps are added, none repeated.
    assert "epoch 3/3" in done.stdout and "epoch 1/3" not in done.stdout
    assert resumed["epochs_run"] == 3
    assert resumed["steps"] == first["steps"] * 3 // 2


def test_two_machines_train_the_one_process_recipe(runs, tmp_path):
    """The several-node launch line, both nodes on loopback with one process each: every process
    is local rank 0 of its node, so anything that took the local rank for the global one would
    write twice or train a different recipe here."""
    tmp, events = runs
    job = tmp / "job.yaml"
    run = tmp_path / "m2"
    port = str(_free_port())
    # Each launch writes to files: with pipes, one launch could block on a full pipe while the
    # test waits on the other, and the pair would wait on each other's collectives for ever.
    logs = [(open(tmp_path / f"out{r}", "w+"), open(tmp_path / f"err{r}", "w+")) for r in (0, 1)]
    launches = [
        subprocess.Popen(
            [*_multi_gpu_launch(2, port, machines=2, machine_rank=rank),
             "-m", "promptrec.cli", "train", "-c", str(job), "--loader", "tabular", "--data", str(events),
             "-o", str(run)],
            env=_launch_env(), stdout=logs[rank][0], stderr=logs[rank][1],
        )
        for rank in (0, 1)
    ]
    try:
        for launch in launches:
            launch.wait(timeout=300)
    finally:
        for launch in launches:  # a failed or hung node must not outlive the test
            if launch.poll() is None:
                launch.kill()
    outputs = []
    for launch, (out, err) in zip(launches, logs):
        out.seek(0)
        err.seek(0)
        outputs.append((out.read(), err.read()))
        out.close()
        err.close()
        assert launch.returncode == 0, outputs[-1][1][-3000:]
    one = json.loads((tmp / "p1" / "metrics.json").read_text())
    two = json.loads((run / "metrics.json").read_text())
    for name, steps in (("model", "steps"), ("sasrec", "epochs_run")):
        assert two[name]["processes"] == 2
        assert two[name][steps] == one[name][steps]
        assert two[name]["train_loss"] == pytest.approx(one[name]["train_loss"], rel=LOSS_TOLERANCE)
        assert two[name]["NDCG@10"] == pytest.approx(one[name]["NDCG@10"], abs=1e-6)
    # Only the global rank 0 (on machine 0) reports.
    assert "model saved to" in outputs[0][0] and "model saved to" not in outputs[1][0]


def test_fsdp_full_sharding_trains_the_one_process_recipe(runs):
    """The LM under FSDP2 full sharding, each process holding half of every weight: the recipe of
    one process, validation on the gathered weights, and a saved model that one process loads."""
    from safetensors.torch import load_file

    from promptrec.core.recommender import load_recommender

    tmp, events = runs
    job = tmp / "job_lm.yaml"
    job.write_text(yaml.safe_dump({k: v for k, v in JOB.items() if k != "compare"}))
    run = tmp / "fsdp"
    _run(["-m", "promptrec.cli", "train", "-c", str(job), "--loader", "tabular", "--data", str(events), "-o", str(run)], 2,
         config=FSDP_CONFIG)  # fmt: skip
    # accelerate saved FSDP's state, a shard per process: the weights were sharded, not replicated.
    assert (run / "checkpoint" / "accelerate" / "pytorch_model_fsdp_0").is_dir()
    one, sharded = (json.loads((d / "metrics.json").read_text())["model"] for d in (tmp / "p1", run))
    assert sharded["processes"] == 2
    assert sharded["steps"] == one["steps"] > 1
    assert sharded["train_loss"] == pytest.approx(one["train_loss"], rel=LOSS_TOLERANCE)
    assert sharded["NDCG@10"] == pytest.approx(one["NDCG@10"], abs=1e-6)
    # The whole weights were saved (rank 0 wrote them), those of the one-process run.
    alone, saved = (load_file(str(d / "model" / "model.safetensors")) for d in (tmp / "p1", run))
    assert saved.keys() == alone.keys()
    assert all(saved[k].shape == alone[k].shape for k in alone)
    assert max((saved[k] - alone[k]).abs().max().item() for k in alone) < WEIGHT_TOLERANCE
    rec = load_recommender(run / "model")  # in this one process
    assert len(rec.recommend(["user0"], k=3)) == 3


def _assert_same_training(alone: Path, run: Path, weights: str) -> dict:
    """``run`` (2 processes) trained the recipe of ``alone`` (one): the same steps, loss within
    the tolerance, test metrics, and saved ``weights`` file (relative to ``model/``); returns it."""
    from safetensors.torch import load_file

    one, sharded = (json.loads((d / "metrics.json").read_text())["model"] for d in (alone, run))
    assert sharded["processes"] == 2 and sharded["steps"] == one["steps"] > 1
    assert sharded["train_loss"] == pytest.approx(one["train_loss"], rel=LOSS_TOLERANCE)
    assert sharded["NDCG@10"] == pytest.approx(one["NDCG@10"], abs=1e-6)
    mine, theirs = (load_file(str(d / "model" / weights)) for d in (alone, run))
    assert mine.keys() == theirs.keys()
    assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) < WEIGHT_TOLERANCE
    return theirs


def test_fsdp_full_sharding_trains_t5_whose_matrix_three_layers_share(tmp_path):
    """T5 ties one matrix into ``shared`` and the encoder's and decoder's embedding layers; under
    FSDP the three become one module (lm_trainer._one_embedding_module), managed once: the
    one-process recipe, and the saved weights of the one-process run."""

    from promptrec.pipeline import JobConfig, run_job

    events = tmp_path / "events.csv"
    cyclic_data(n_users=33, n_items=20).interactions.to_csv(events, index=False)
    params = {**JOB["params"], "model": {"preset": "tiny", "backbone": "t5", "dropout": 0.0}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"recommender": "p5", "data": {"loader": "tabular", "path": str(events)},
                                   "params": params}))  # fmt: skip
    alone, run = tmp_path / "p1", tmp_path / "fsdp"
    run_job(JobConfig.load(job), alone, progress=False)
    _run(["-m", "promptrec.cli", "train", "-c", str(job), "-o", str(run)], 2, config=FSDP_CONFIG)
    assert (run / "checkpoint" / "accelerate" / "pytorch_model_fsdp_0").is_dir()
    _assert_same_training(alone, run, "model.safetensors")


NO_DEEPSPEED = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not a promptrec dependency: pip install deepspeed"
)


def _zero3_config(directory: Path, batch: int) -> Path:
    """The example ZeRO-3 config files, the DeepSpeed one with the micro batch of ``batch`` on 2
    processes, written to ``directory``; the accelerate one's path."""
    ds = json.loads((FSDP_CONFIG.parent / "zero3.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = batch // 2
    (directory / "zero3.json").write_text(json.dumps(ds))
    config = yaml.safe_load((FSDP_CONFIG.parent / "zero3.yaml").read_text())
    config["deepspeed_config"]["deepspeed_config_file"] = str(directory / "zero3.json")
    (directory / "zero3.yaml").write_text(yaml.safe_dump(config))
    return directory / "zero3.yaml"


@NO_DEEPSPEED
def test_zero3_trains_the_one_process_recipe(runs, tmp_path, monkeypatch):
    """DeepSpeed ZeRO-3 through the example config (every weight partitioned: no persistence
    threshold), against one process: validation and saving on the gathered weights, with each
    process's validation taking its own number of forwards (9 users in batches of 4)."""
    import torch

    from promptrec.pipeline import JobConfig, run_job

    _, events = runs
    params = {**JOB["params"], "train": {**JOB["params"]["train"], "val_users": 9},
              "eval": {**JOB["params"]["eval"], "batch_size": 4}}  # fmt: skip
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"recommender": "p5", "data": {"loader": "tabular", "path": str(events)},
                                   "params": params}))  # fmt: skip
    alone, run = tmp_path / "p1", tmp_path / "zero3"
    run_job(JobConfig.load(job), alone, progress=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    _run(["-m", "promptrec.cli", "train", "-c", str(job), "-o", str(run)], 2, config=_zero3_config(tmp_path, 8))
    assert any((run / "checkpoint" / "accelerate").rglob("zero_pp_rank_1_*"))  # partitioned
    _assert_same_training(alone, run, "model.safetensors")


def test_one_embedding_module_keeps_the_function():
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from promptrec.models.lm_trainer import _one_embedding_module

    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)).eval()
    ids = torch.randint(0, 50, (2, 5))
    before = t5(input_ids=ids, decoder_input_ids=ids).logits
    assert t5.encoder.embed_tokens is not t5.shared
    _one_embedding_module(t5)
    assert t5.encoder.embed_tokens is t5.shared and t5.decoder.embed_tokens is t5.shared
    assert t5.lm_head.weight is t5.shared.weight  # the output layer's tie untouched
    torch.testing.assert_close(t5(input_ids=ids, decoder_input_ids=ids).logits, before, rtol=0, atol=0)


def _gemma_params(gemma: Path, tuning: dict) -> dict:
    """The Gemma recipe (recipes/gemma_sequence.yaml) at test size, dropout off (LoRA's too)."""
    return {
        "model": {"pretrained": str(gemma), "tuning": tuning, "templates": "history_last", "prompt_eos": False,
                  "item_init": "lm", "dropout": 0.0},
        "index": {"method": "random", "params": {"levels": 1}},
        "tasks": {"weights": {"sequence": 1.0}},
        "train": {"epochs": 2, "batch_size": 8, "val_users": 10, "patience": 5, "history_loss": True,
                  "softmax": "items", "lr": 0.01},
        "eval": {"unconstrained_users": 0},
    }  # fmt: skip


# The recipe's LoRA, less its training of the item rows (see the test below).
GEMMA_LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "train_embeddings": False,
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}  # fmt: skip


def test_fsdp_full_sharding_trains_a_gemma_with_lora_and_in_full(tmp_path):
    """The Gemma sequence LM under FSDP2, against one process: LoRA (the job's model; each unit
    holds the frozen base and the adapter beside it) and full tuning (a compare entry), in one
    launch; the same steps, losses, test metrics and saved weights, and saved models that load."""
    from safetensors.torch import load_file

    from promptrec.core.recommender import load_recommender
    from promptrec.pipeline import JobConfig, run_job

    gemma = tiny_gemma(tmp_path / "gemma", tied=True)
    data = cyclic_data(n_users=33, n_items=20)
    events, items = tmp_path / "events.csv", tmp_path / "items.csv"
    data.interactions.to_csv(events, index=False)
    data.items.reset_index().to_csv(items, index=False)  # titles, which item_init=lm starts the item rows from
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "recommender": "p5",
        "data": {"loader": "tabular", "path": str(events), "options": {"items": str(items)}},
        "params": _gemma_params(gemma, GEMMA_LORA),
        "compare": [{"recommender": "p5", "label": "full", "params": _gemma_params(gemma, {"method": "full"})}],
    }))  # fmt: skip
    alone, run = tmp_path / "p1", tmp_path / "fsdp"
    run_job(JobConfig.load(job), alone, progress=False)  # one process: this one (what `promptrec train` runs)
    _run(["-m", "promptrec.cli", "train", "-c", str(job), "-o", str(run)], 2, config=FSDP_CONFIG)
    for key, checkpoint in (("model", run / "checkpoint"), ("full", run / "compare" / "full.run" / "checkpoint")):
        assert (checkpoint / "accelerate" / "pytorch_model_fsdp_0").is_dir()  # sharded, a shard per process
        one, sharded = (json.loads((d / "metrics.json").read_text())[key] for d in (alone, run))
        assert sharded["processes"] == 2
        assert sharded["steps"] == one["steps"] > 1
        assert sharded["train_loss"] == pytest.approx(one["train_loss"], rel=LOSS_TOLERANCE)
        assert sharded["NDCG@10"] == pytest.approx(one["NDCG@10"], abs=1e-6)
    # LoRA saved the adapter and the grown embedding matrix (frozen here), no copy of the base's blocks.
    lora_files = {"adapter/adapter_model.safetensors", "embeddings.safetensors"}
    for saved, files in (("model", lora_files), ("compare/full", {"model.safetensors"})):
        assert {str(f.relative_to(run / saved)) for f in (run / saved).rglob("*.safetensors")} == files
        for name in files:
            mine, theirs = (load_file(str(d / saved / name)) for d in (alone, run))
            assert mine.keys() == theirs.keys() and all(mine[k].shape == theirs[k].shape for k in mine)
            assert max((mine[k] - theirs[k]).abs().max().item() for k in mine) < WEIGHT_TOLERANCE
        rec = load_recommender(run / saved)  # in this one process
        assert len(rec.recommend(["user0"], k=3)) == 3


@NO_DEEPSPEED
def test_zero3_trains_the_gemma_recipes_lora_with_its_item_rows(tmp_path, monkeypatch):
    """The recipe's own LoRA (the item rows trained as peft's trainable tokens on the tied
    embedding), which FSDP cannot shard (next test), under ZeRO-3 against one process."""
    import torch

    from promptrec.pipeline import JobConfig, run_job

    gemma = tiny_gemma(tmp_path / "gemma", tied=True)
    data = cyclic_data(n_users=33, n_items=20)
    events, items = tmp_path / "events.csv", tmp_path / "items.csv"
    data.interactions.to_csv(events, index=False)
    data.items.reset_index().to_csv(items, index=False)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "recommender": "p5",
        "data": {"loader": "tabular", "path": str(events), "options": {"items": str(items)}},
        "params": _gemma_params(gemma, {**GEMMA_LORA, "train_embeddings": True}),
    }))  # fmt: skip
    alone, run = tmp_path / "p1", tmp_path / "zero3"
    run_job(JobConfig.load(job), alone, progress=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    _run(["-m", "promptrec.cli", "train", "-c", str(job), "-o", str(run)], 2, config=_zero3_config(tmp_path, 8))
    # the adapter holds the trained item rows
    saved = _assert_same_training(alone, run, "adapter/adapter_model.safetensors")
    assert any("trainable_tokens" in k for k in saved)


def test_fsdp_refuses_trainable_tokens_on_a_tied_embedding(tmp_path):
    """The recipe's LoRA trains the item rows as peft's trainable tokens, which on a tied embedding
    wrap the input embedding and the output layer apart (lm_trainer._split_ties): refused under
    FSDP before accelerate fails on it. Without them, or tuned fully, the embedding is tied plainly."""
    from promptrec.data import leave_one_out
    from promptrec.models.lm_trainer import _split_ties
    from promptrec.models.p5.config import RunConfig
    from promptrec.models.p5.model import P5Recommender

    gemma = tiny_gemma(tmp_path / "gemma", tied=True)
    split = leave_one_out(cyclic_data(n_users=10, n_items=20))

    def ties(tuning: dict) -> list[str]:
        params = _gemma_params(gemma, tuning)
        rec = P5Recommender(RunConfig().update({k: params[k] for k in ("model", "index", "tasks")})).build(split)
        return _split_ties(rec.model)

    shared = ["token_adapter.base_layer.weight", "token_adapter.trainable_tokens_delta.default"]  # matrix, new rows
    assert ties({**GEMMA_LORA, "train_embeddings": True}) == shared
    assert ties(GEMMA_LORA) == [] and ties({"method": "full"}) == []


@pytest.mark.parametrize("n, unit, processes", [(33, 7, 2), (33, 7, 3), (5, 7, 2), (0, 4, 2), (10, 1, 4), (3, 1, 4)])
def test_shards_tile_the_range_in_whole_blocks_and_rank_order(monkeypatch, n, unit, processes):
    from promptrec.core import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: processes)
    parts = []
    for r in range(processes):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        parts.append(distributed.shard(n, unit))
    assert [i for part in parts for i in part] == list(range(n))  # all, once, in order
    assert all(part.start % unit == 0 for part in parts if len(part))  # blocks stay whole
    blocks = [-(-len(part) // unit) for part in parts]
    assert max(blocks) - min(blocks) <= 1  # as even as whole blocks allow
