"""The paper_tasks evaluator scores a response as the LayerIF authors' ``evaluation.py`` does
(HadiAskari/Expert_Allocation): restated here line by line from their loop, nothing imported from
layerif, and compared on hand-written model outputs, including the edge cases of their regexes."""

from __future__ import annotations

import re

import pytest

from layerif_core.tasks.paper import PAPER_TASKS
from layerif_eval.paper import accuracy, extract, response


def authors_correct(dataset: str, outputs: list[str], answers: list[str]) -> tuple[list[bool], float]:
    """Their evaluation loop after generation: ``get_response`` (split on "### Response:", take [1],
    strip), the GLUE regex and label-word check or the QA ``findall``, ``str(answer) == str(gt)``,
    ``acc = correct / len * 100``."""
    output = [o.split("### Response:")[1].strip() for o in outputs]
    if "cola" in dataset or "mrpc" in dataset:
        pattern = re.compile(r'Answer: ([\w\s]+)')
        res = []
        for otp in output:
            try:
                res.append(pattern.search(otp).group(1))
            except AttributeError:
                res.append('N/A')
    else:
        pattern = re.compile(r'The answer is ([A-Z]).')
        res = [pattern.findall(otp) for otp in output]
    correct = []
    for r_i in range(len(res)):
        if "mrpc" in dataset:
            answer = res[r_i] if res[r_i] in ("equivalent", "not equivalent") else "FAILED"
        elif "cola" in dataset:
            answer = res[r_i] if res[r_i] in ("acceptable", "unacceptable") else "FAILED"
        else:
            answer = res[r_i][0] if len(res[r_i]) >= 1 else []
        correct.append(str(answer) == str(answers[r_i]))
    return correct, sum(correct) / len(res) * 100


PROMPT = "<s> Below is ...\n\n### Instruction:\nTell me ...\n\n### Response:\n"
CASES = {
    "mrpc": (["Answer: equivalent.</s>", "Answer: not equivalent.</s><unk>", "Answer: equivalent\nok",
              "equivalent", "Answer: equivalent", "Answer:  equivalent.", "Answer: not equivalent!"],
             ["equivalent", "not equivalent", "equivalent", "equivalent", "equivalent", "equivalent",
              "equivalent"]),
    "cola": (["Answer: acceptable.", "Answer: unacceptable.", "Answer: acceptable.", "Answer: ok.",
              "### Response: Answer: acceptable."],
             ["acceptable", "acceptable", "unacceptable", "acceptable", "acceptable"]),
    "commonsense_qa": (["Answer: The answer is B.", "The answer is C", "The answer is AB.",
                        "the answer is D.", "The answer is E. The answer is A.", "The answer is  A."],
                       ["B", "C", "A", "D", "E", "A"]),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_predictions_and_accuracy_match_the_authors_loop(task):
    outputs, answers = CASES[task]
    decoded = [PROMPT + o for o in outputs]
    want_correct, want_acc = authors_correct(task, decoded, answers)
    predictions = [extract(PAPER_TASKS[task], response(d)) for d in decoded]
    assert [p == a for p, a in zip(predictions, answers, strict=True)] == want_correct
    assert accuracy(predictions, answers) == pytest.approx(want_acc)
    assert 0 < want_acc < 100  # the cases hold right and wrong answers


def test_the_cases_hit_the_regexes_edge_cases():
    """A stated expectation per case, independent of both implementations above."""
    mrpc = PAPER_TASKS["mrpc"]
    assert extract(mrpc, "Answer: not equivalent.</s><unk>") == "not equivalent"
    assert extract(mrpc, "Answer: equivalent\nok") == "FAILED"  # [\w\s]+ takes the newline and "ok"
    assert extract(mrpc, "Answer: equivalent") == "equivalent"
    assert extract(PAPER_TASKS["scienceqa"], "The answer is C") == "FAILED"  # "." needs a character
    assert extract(PAPER_TASKS["scienceqa"], "The answer is AB.") == "A"
