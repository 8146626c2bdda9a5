"""``train.item_attributes``: one learned vector per shared category and brand, added to an item's
row (as the mean of its own) through the text map's parametrization."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from conftest import cyclic_data
from test_semantic_ids import _text_settings, encoder, spread_text  # noqa: F401 (fixtures)

from promptrec.data import InteractionData, leave_one_out
from promptrec.models.p5.config import RunConfig
from promptrec.models.p5.item_text import TextProjection, add_text_projection, attribute_table, bake
from promptrec.models.p5.model import P5Recommender
from promptrec.models.p5.training import train


def test_attribute_table_keeps_shared_categories_and_brands_apart() -> None:
    items = pd.DataFrame(
        {
            "categories": [["Beauty", "Face"], ["Beauty", "Nails"], ["Beauty", "Face"], None],
            "brand": ["Face", "Acme", "Acme", ""],
        },
        index=["a", "b", "c", "d"],
    )
    table = attribute_table(items, ["a", "b", "c", "d", "unknown"])
    # Shared by two or more: brand Acme (0), category Beauty (1), category Face (2); 'Nails' and
    # the brand 'Face' are one item's each. Ids in sorted name order, -1 pads.
    assert table.tolist() == [[1, 2, -1], [0, 1, -1], [0, 1, 2], [-1, -1, -1], [-1, -1, -1]]
    # A table with one of the two columns: the other counts as empty.
    assert attribute_table(items[["categories"]], ["a", "b", "c"]).tolist() == [[0, 1], [0, -1], [0, 1]]
    assert attribute_table(items[["brand"]], ["a", "b", "c"]).tolist() == [[-1], [0], [0]]
    with pytest.raises(ValueError, match="no category or brand that two items share"):
        attribute_table(items.iloc[:1], ["a"])


def test_attribute_vectors_add_the_mean_of_an_items_own() -> None:
    rows = torch.tensor([3, 4, 5])
    text, projection = torch.randn(3, 4), torch.randn(4, 2)
    module = TextProjection(rows, text, projection, torch.tensor([[0, 1], [1, -1], [-1, -1]]))
    weight = torch.zeros(6, 2)
    # Zero at the start: the rows are the text part alone.
    torch.testing.assert_close(module(weight)[rows], text @ projection)
    with torch.no_grad():
        module.attribute_vectors[:2] = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    out = module(weight)[rows] - text @ projection
    # Item 0: mean of attributes 0 and 1; item 1: attribute 1 alone (padding left out of the mean);
    # item 2: none.
    torch.testing.assert_close(out, torch.tensor([[2.0, 1.0], [3.0, 2.0], [0.0, 0.0]]))


def _data_with_attributes(n_users: int = 20) -> InteractionData:
    data = cyclic_data(n_users=n_users)
    items = data.items.copy()
    # Items on the cycle share a category with their neighbours: what comes next is in the same group.
    items["categories"] = [[f"group{int(i.removeprefix('item')) // 3}"] for i in items.index]
    items["brand"] = ["Acme" if int(i.removeprefix("item")) % 2 else "Other" for i in items.index]
    return InteractionData(data.interactions, items)


def test_item_attributes_train_save_plain_and_resume(encoder, spread_text, tmp_path) -> None:  # noqa: F811
    split = leave_one_out(_data_with_attributes())
    settings = {**_text_settings(encoder, 0.01), "train.text_projection": True, "train.item_attributes": True,
                "train.epochs": 2}
    built = P5Recommender(RunConfig().update(settings)).build(split, progress=False)
    (rows, start), (text, projection) = built.item_start, built.item_text
    assert built.item_attributes is not None and built.item_attributes.shape[0] == len(rows)
    model = built.model
    add_text_projection(model, rows, text, projection, attributes=built.item_attributes)
    emb = model.get_input_embeddings()
    torch.testing.assert_close(emb.weight[rows].detach(), start, rtol=0, atol=1e-5)  # the same start
    ids = torch.tensor([rows[:4].tolist()])
    model(input_ids=ids, labels=ids).loss.backward()
    vectors = emb.parametrizations.weight[0].attribute_vectors
    assert vectors.grad is not None and vectors.grad[:-1].abs().sum() > 0
    assert sum(p is vectors for p in model.parameters()) == 1
    with torch.no_grad():
        vectors.add_(1.0)
    expected = emb.weight.detach().clone()
    bake(model)
    assert torch.equal(model.get_input_embeddings().weight.detach(), expected)

    # Trained: the vectors moved, and the saved model is plain, reloads and ranks alike.
    rec = P5Recommender(RunConfig().update(settings))
    train(rec, split, output_dir=tmp_path / "run", progress=False)
    rec.save_pretrained(tmp_path / "saved")
    back = P5Recommender.from_pretrained(tmp_path / "saved")
    users = list(rec.train_history)[:6]
    assert rec.recommend(users, 5).equals(back.recommend(users, 5))
    # Cut after one epoch and resumed, it ends as the run never cut.
    cut = P5Recommender(RunConfig().update({**settings, "train.epochs": 1}))
    train(cut, split, output_dir=tmp_path / "cut", progress=False)
    resumed = P5Recommender(RunConfig().update(settings))
    train(resumed, split, output_dir=tmp_path / "cut", resume=True, progress=False)
    for key, value in rec.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    # Without the attribute vectors the same run ends elsewhere.
    plain = P5Recommender(RunConfig().update({**settings, "train.item_attributes": False}))
    train(plain, split, output_dir=tmp_path / "plain", progress=False)
    assert not torch.equal(plain.model.get_input_embeddings().weight, rec.model.get_input_embeddings().weight)
    # A checkpoint trained without them is refused, not resumed with vectors it never had.
    longer = P5Recommender(RunConfig().update({**settings, "train.epochs": 3}))
    with pytest.raises(ValueError, match="trained without train.item_attributes"):
        train(longer, split, output_dir=tmp_path / "plain", resume=True, progress=False)
    with pytest.raises(ValueError, match="needs train.text_projection=true"):
        RunConfig().update({**settings, "train.text_projection": False})
