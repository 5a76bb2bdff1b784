import logging
from dataclasses import replace

import pytest
import torch

from datamodules.prompts import format_prompt, format_target
from datamodules.reasoning import ReasoningDataModule, load_split_records
from datamodules.records import DataError
from datamodules.sampling import ResumableBatchSampler
from datamodules.synthetic import SyntheticConfig
from lightning_modules.config import DataConfig, EmbeddedModelConfig, ModelConfig
from lightning_modules.policy import load_tokenizer, resolve_model_path

SMALL = SyntheticConfig(num_train=60, num_val=8, num_test=8)


@pytest.fixture(scope="module")
def tokenizer(model_cache):
    tiny = EmbeddedModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    return load_tokenizer(resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=tiny)))


def datamodule(tokenizer, train_batches, **overrides):
    config = replace(DataConfig(synthetic=SMALL, batch_size=4), **overrides)
    dm = ReasoningDataModule(config, tokenizer, train_batches)
    dm.setup()
    return dm


def test_annotated_batch_masks_exactly_the_target_and_eos(tokenizer):
    dm = datamodule(tokenizer, "annotated")
    examples = dm.examples["train"][:4]
    batch = dm.collate_annotated(examples)
    records = load_split_records(dm.config)["train"]
    for row, example in enumerate(examples):
        target = batch["input_ids"][row][batch["loss_mask"][row].bool()]
        assert tokenizer.decode(target) == format_target(records[example.index]) + tokenizer.eos_token
        prompt_len = len(example.prompt_ids)
        assert tokenizer.decode(batch["input_ids"][row, :prompt_len]) == format_prompt(records[example.index].question)
    # Right padding: padding sits after the target and is masked out of attention and loss.
    assert (batch["attention_mask"] >= batch["loss_mask"]).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


def test_prompt_batches_are_left_padded_and_unlabeled_ones_carry_no_answer(tokenizer):
    labeled = datamodule(tokenizer, "labeled")
    batch = labeled._collate_train(labeled.examples["train"][:4])
    assert batch["prompt_mask"][:, -1].all(), "left padding: every prompt ends in the last column"
    assert not batch["prompt_mask"][:, 0].all() or len({len(e.prompt_ids) for e in labeled.examples["train"][:4]}) == 1
    assert torch.equal(batch["answer"], torch.tensor([e.answer for e in labeled.examples["train"][:4]], dtype=torch.float64))
    assert batch["target_mask"].sum() > 0

    unlabeled = datamodule(tokenizer, "unlabeled")
    batch = unlabeled._collate_train(unlabeled.examples["train"][:4])
    assert set(batch) == {"prompt_ids", "prompt_mask", "index"}
    # Evaluation batches still carry the answers (labels are used only there).
    assert "answer" in unlabeled._collate_eval(unlabeled.examples["val"][:4])


def test_an_overlong_example_stops_with_a_sentence_naming_it_unless_skipped(tokenizer, caplog):
    with pytest.raises(DataError, match=r"synthetic record \S+ has a prompt of \d+ tokens, over data.max_prompt_tokens=40"):
        datamodule(tokenizer, "annotated", max_prompt_tokens=40)
    with caplog.at_level(logging.WARNING):
        skipped = datamodule(tokenizer, "annotated", max_prompt_tokens=40, on_error="skip")
    assert any("skipped" in r.message and "data.max_prompt_tokens=40" in r.message for r in caplog.records)
    assert 0 < len(skipped.examples["train"]) < 60


def test_overlong_examples_are_dropped_or_truncated_with_a_logged_count(tokenizer, caplog):
    with caplog.at_level(logging.WARNING):
        dropped = datamodule(tokenizer, "annotated", max_prompt_tokens=40, overlong="drop")
    assert any("dropped" in r.message and "data.max_prompt_tokens=40" in r.message for r in caplog.records)
    assert dropped.overlong_counts["train_prompt"] > 0
    assert len(dropped.examples["train"]) == 60 - dropped.overlong_counts["train_prompt"] - dropped.overlong_counts["train_target"]
    assert all(len(e.prompt_ids) <= 40 for e in dropped.examples["train"])
    truncated = datamodule(tokenizer, "annotated", max_prompt_tokens=40, max_target_tokens=10, overlong="truncate")
    assert len(truncated.examples["train"]) == 60
    assert all(len(e.prompt_ids) <= 40 and len(e.target_ids) <= 10 for e in truncated.examples["train"])


def test_sampler_resumes_at_the_exact_batch_and_shards_by_rank():
    def batches(start, rank=0, world=1, num=12):
        sampler = ResumableBatchSampler(25, 4, seed=3, start_batch=lambda: start, num_batches=num, rank=rank, world_size=world)
        return list(sampler)

    full = batches(0)
    assert len(full) == 12 and batches(5) == full[5:]
    first_pass = [i for b in full for i in b][:25]
    assert sorted(first_pass) == list(range(25)), "each pass visits every item once"
    assert [i for b in full for i in b][25:50] != first_pass, "each pass is reshuffled"
    ranks = [batches(0, rank=r, world=2, num=3) for r in (0, 1)]
    for b in range(3):
        assert not set(ranks[0][b]) & set(ranks[1][b])
        assert ranks[0][b] + ranks[1][b] == full[2 * b] + full[2 * b + 1]


def test_file_sources_hold_out_validation_questions(sample_data):
    path = str(sample_data / "gsm8k" / "train.jsonl")
    splits = load_split_records(DataConfig(path=path, val_size=10, test_path=str(sample_data / "gsm8k" / "test.jsonl")))
    assert len(splits["val"]) == 10 and len(splits["test"]) == 50
    train_questions = {r.question for r in splits["train"]}
    assert not train_questions & {r.question for r in splits["val"]}
    assert not train_questions & {r.question for r in splits["test"]}
    assert len(splits["train"]) + 10 == 50  # the excerpts share no question, so only val leaves train


def test_sft_on_a_source_without_chains_of_thought_is_refused(tokenizer, sample_data):
    # val_size below the excerpt's 40 rows, so that questions remain for training
    config = DataConfig(path=str(sample_data / "svamp" / "SVAMP.json"), batch_size=4, val_size=10)
    with pytest.raises(DataError, match="no chains of thought"):
        ReasoningDataModule(config, tokenizer, "annotated").setup()
    ReasoningDataModule(config, tokenizer, "unlabeled").setup()  # fine for a label-free method


def test_hub_sources_ask_for_the_split_of_their_role(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, config_name=None, split=None):
        calls.append((name, config_name, split))
        rows = [{"question": f"{split} question {i}?", "answer": f"1 + {i} = {i + 1}\n#### {i + 1}"} for i in range(30)]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_split_records(DataConfig(path="openai/gsm8k", hub_config="main", test_path="openai/gsm8k", val_size=5))
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert len(splits["val"]) == 5 and len(splits["train"]) == 25
    assert all(r.question.startswith("test") for r in splits["test"])
