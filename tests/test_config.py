import pytest
from pydantic import ValidationError

from promptrec.config import RunConfig


def test_unknown_key_rejected_in_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ValidationError, match="learning_rate"):
        RunConfig.load(path)


def test_unknown_top_level_key_rejected(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trian:\n  epochs: 2\n")
    with pytest.raises(ValidationError, match="trian"):
        RunConfig.load(path)


def test_override_of_unknown_key_rejected():
    with pytest.raises((ValidationError, ValueError)):
        RunConfig().update({"train.epochz": 3})
    with pytest.raises(ValueError):
        RunConfig().update({"nosection.x": 3})


def test_bad_values_and_task_names_rejected():
    with pytest.raises(ValidationError):
        RunConfig().update({"train.lr": -1})
    with pytest.raises((ValidationError, KeyError)):
        RunConfig().update({"tasks.weights": {"sequentail": 1.0}})


def test_round_trip_and_frozen(tmp_path):
    cfg = RunConfig().update({"train.epochs": 3, "model.preset": "tiny"})
    path = tmp_path / "c.json"
    import json

    path.write_text(json.dumps(cfg.to_dict()))
    assert RunConfig.load(path) == cfg
    with pytest.raises(ValidationError):
        cfg.train.epochs = 4


@pytest.mark.parametrize(
    "name",
    ["beauty", "sports", "sequence_lm", "sequence_lm_micro", "sequence_lm_text", "sequence_lm_anchor", "sequence_lm_mixed",
     "ml100k_decoder"],
)
def test_shipped_run_configs_load(name):
    """The recipes the README and bench/README.md run must stay valid as the schema changes."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = RunConfig.load(path)
    if name == "sequence_lm_micro":
        # The bench rows' recipe: SASRec's shape, the history-last prompt without </s>.
        assert (cfg.model.preset, cfg.model.prompt_eos, cfg.train.epochs) == ("micro", False, 50)
    if name == "sequence_lm_text":
        # ... with text-initialised item tokens, lr 1e-3 and 25 epochs.
        assert (cfg.model.preset, cfg.model.item_init, cfg.train.lr, cfg.train.epochs) == ("micro", "text", 1e-3, 25)
    if name == "sequence_lm_anchor":
        # ... that recipe with a 50-item window, the item anchor and dropout 0.2: one --set line away.
        text = RunConfig.load(path.with_name("sequence_lm_text.yaml"))
        changed = {"model.max_history": 50, "model.dropout": 0.2, "train.item_anchor": 0.5}
        assert cfg == text.update(changed)
    if name == "sequence_lm_mixed":
        # ... and the anchor recipe with dropout 0.3 and batches mixed at random.
        anchor = RunConfig.load(path.with_name("sequence_lm_anchor.yaml"))
        assert cfg == anchor.update({"model.dropout": 0.3, "train.length_window": 1})
