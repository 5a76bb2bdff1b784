"""Prompt and target text, in the ReFT/CARFT format (docs/METHODS.md section 0) or a chat template."""

from __future__ import annotations

from collections.abc import Iterator

from transformers import PreTrainedTokenizerBase

from datamodules.records import Record, format_number

PROMPT_TEMPLATE = "Question:\n{question}\nAnswer reasoning:\n"
ANSWER_SENTENCE = "Therefore, the answer is: {answer}"


def format_prompt(question: str, tokenizer: PreTrainedTokenizerBase | None = None, style: str = "reft") -> str:
    if style == "chat":
        if tokenizer is None or not tokenizer.chat_template:
            raise ValueError("data.prompt_style 'chat' needs a tokenizer with a chat template")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
    return PROMPT_TEMPLATE.format(question=question)


def format_target(record: Record) -> str:
    """The annotated target without EOS: the chain of thought, then the answer sentence."""
    answer = ANSWER_SENTENCE.format(answer=format_number(record.answer))
    if record.chain_of_thought:
        return f"{record.chain_of_thought}\n{answer}"
    return answer


def tokenizer_corpus(num_problems: int = 5000) -> Iterator[str]:
    """Text the embedded tokenizer is trained on: prompts and targets of generated problems.

    Fixed (its own seed, default knobs) so the tokenizer does not change with data knobs.
    """
    from datamodules.synthetic import SyntheticConfig, generate_splits

    config = SyntheticConfig(seed=0, num_train=num_problems, num_val=1, num_test=1, max_steps=4)
    for record in generate_splits(config)["train"]:
        yield format_prompt(record.question) + format_target(record)
