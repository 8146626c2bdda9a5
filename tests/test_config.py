import pytest
from pydantic import ValidationError

from promptrec.models.p5.config import RunConfig


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


@pytest.mark.parametrize("name", ["sequence_lm", "t5_p5", "ml100k_decoder", "quickstart"])
def test_shipped_recipes_load_by_name(name):
    """The recipes the README and bench/README.md run must stay valid as the schema changes, and
    a prompt-LM run config is a job of the p5 recommender with its sections as parameters."""
    from promptrec.pipeline import JobConfig

    job = JobConfig.load(name)
    if job.recommender == "p5":
        RunConfig.model_validate(job.params)  # the parameters are a valid run config
    if name == "sequence_lm":
        # The best recipe: SASRec's shape, text-initialised and anchored item tokens, random batches,
        # long histories in windows.
        cfg = RunConfig.load(name)
        assert (cfg.model.preset, cfg.model.item_init, cfg.train.item_anchor, cfg.train.length_window) == ("micro", "text", 0.5, 1)
        assert cfg.tasks.window_stride == 10
        assert RunConfig.model_validate(job.params) == cfg
    if name == "quickstart":
        assert [c.recommender for c in job.compare] == ["sasrec", "popularity"]


def test_a_missing_recipe_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="sequence_lm"):
        RunConfig.load("no_such_recipe")


def test_job_overrides_go_to_the_job_or_the_model():
    """``data.*`` and ``evaluation.*`` are the job's, anything else a model parameter; a run
    config's own evaluation keys (eval.users, eval.ks, train.seed) keep steering the job's."""
    from promptrec.pipeline import JobConfig

    job = JobConfig.load("sequence_lm").update(
        {"data.path": "/elsewhere", "train.epochs": 3, "eval.users": 100, "train.seed": 7}
    )
    assert job.recommender == "p5" and job.data.path == "/elsewhere"
    assert job.params["data"]["path"] == "/elsewhere"  # the saved run config names the same data
    assert job.params["train"]["epochs"] == 3 and job.params["model"]["preset"] == "micro"
    assert (job.evaluation.users, job.evaluation.seed) == (100, 7)
    sasrec = JobConfig(recommender="sasrec").update({"epochs": 5, "evaluation.users": 50})
    assert sasrec.params == {"epochs": 5} and sasrec.evaluation.users == 50
    with pytest.raises(ValidationError):
        JobConfig.model_validate({"recommender": "sasrec", "bogus": 1})
