"""The embedded default goes through the same from_pretrained path as a hub model."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from datamodules.prompts import format_prompt, format_target
from datamodules.records import Record
from lightning_modules.config import EmbeddedModelConfig, ModelConfig
from lightning_modules.policy import Policy, resolve_model_path

TINY = EmbeddedModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def test_embedded_model_loads_through_from_pretrained(model_cache):
    path = resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=TINY))
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.vocab_size == len(tokenizer) and model.config.hidden_size == 32
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    # Built once: a second resolve reuses the folder.
    assert resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=TINY)) == path


def test_embedded_build_is_deterministic(tmp_path, model_cache):
    a = resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=TINY))
    b = resolve_model_path(ModelConfig(cache_dir=str(tmp_path), embedded=TINY))
    ma, mb = AutoModelForCausalLM.from_pretrained(a), AutoModelForCausalLM.from_pretrained(b)
    for (name, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert AutoTokenizer.from_pretrained(a).get_vocab() == AutoTokenizer.from_pretrained(b).get_vocab()


def test_tokenizer_splits_numbers_into_digits_and_round_trips(model_cache):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=TINY)))
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("He has 1234 apples.", add_special_tokens=False)["input_ids"])
    assert [t for t in tokens if t.strip("Ġ").isdigit()] == ["1", "2", "3", "4"]
    record = Record("x", "Janet’s ducks lay 16 eggs; she sells them for $2.50 each.", 18.0, "16 - 3 - 4 = 9\n9 * 2 = 18")
    for text in (format_prompt(record.question), format_target(record)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_chat_prompt_style_uses_the_tokenizer_template(model_cache):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=TINY)))
    prompt = format_prompt("What is 2 + 3?", tokenizer, style="chat")
    assert "What is 2 + 3?" in prompt and prompt != format_prompt("What is 2 + 3?")


def test_policy_positions_ignore_left_padding(model_cache):
    path = resolve_model_path(ModelConfig(cache_dir=str(model_cache), embedded=TINY))
    policy = Policy.from_pretrained(path, ModelConfig()).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[0, 0, 5, 6, 7, 8]])
    logits, hidden = policy(ids, torch.ones_like(ids), return_hidden=True)
    padded_logits, _ = policy(padded, torch.tensor([[0, 0, 1, 1, 1, 1]]))
    assert hidden.shape == (1, 4, 32)
    assert torch.allclose(logits, padded_logits[:, 2:], atol=1e-5)


def test_a_folder_write_that_fails_leaves_the_old_folder_intact(tmp_path):
    from lightning_modules.policy import staged_folder

    target = tmp_path / "hf"
    with staged_folder(target) as staging:
        (staging / "model").write_text("good")
    try:
        with staged_folder(target, replace=True) as staging:
            (staging / "model").write_text("half")
            raise KeyboardInterrupt  # killed during the export
    except KeyboardInterrupt:
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["hf"], "no staging folder is left behind"
    assert (target / "model").read_text() == "good"
    with staged_folder(target, replace=True) as staging:
        (staging / "model").write_text("new")
    assert (target / "model").read_text() == "new"
