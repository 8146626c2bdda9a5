"""The OpenAI chat endpoint of ``promptrec serve`` against ``promptrec recommend``, on a real model.

Starts ``promptrec serve MODEL`` as a child process and, for ``--users`` users drawn (seeded)
from the model's users, asks it with the ``openai`` package (``base_url=http://127.0.0.1:PORT/v1``)
"I am user U. What should I watch next?". The ten item ids of each answer are compared with
those of ``promptrec recommend --model MODEL --user U ... -k 10 --json``, run once for all users
in a subprocess. Timed (wall clock in the client, per request): the first chat request of each
user (the model ranks), the same request again (the ranking comes from the server's cache, so
this is grounding plus the protocol), a streamed request, and a three-turn conversation (a liked
title, a disliked title, a genre) whose answer must keep to the genre.

Prints one JSON object and writes it to ``bench/results/chat_openai.json``.

    python bench/chat_openai.py --model runs/quickstart/model
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import pandas as pd

from _serving import Server, machine_info

ROOT = Path(__file__).resolve().parents[1]


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "n": len(ms),
        "mean": round(statistics.fmean(ms), 1),
        "p50": round(statistics.median(ms), 1),
        "p95": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 1),
        "max": round(ms[-1], 1),
    }


def timed(call):
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "runs" / "quickstart" / "model"), help="saved model directory")
    ap.add_argument("--users", type=int, default=50, help="users compared")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the model process")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "chat_openai.json"))
    args = ap.parse_args()
    model = Path(args.model)
    if not (model / "promptrec_config.json").is_file():
        raise SystemExit(f"{model} is not a model directory: run `promptrec quickstart` or pass --model DIR")

    # The users with a stored history, as the model directory keeps them.
    known = sorted(pd.read_parquet(model / "histories.parquet")["user_id"].astype(str).unique())
    users = random.Random(args.seed).sample(known, min(args.users, len(known)))
    items = pd.read_parquet(model / "items.parquet")
    items.index = items.pop("item_id").astype(str)

    started = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "promptrec.cli", "recommend", "--model", str(model), "-k", "10", "--json",
         *(a for u in users for a in ("--user", u))],
        check=True, capture_output=True, text=True,
    )
    cli_seconds = time.perf_counter() - started
    expected: dict[str, list[str]] = {}
    for row in json.loads(cli.stdout):
        expected.setdefault(str(row["user_id"]), []).append(str(row["item_id"]))

    with tempfile.TemporaryDirectory() as tmp:
        key = secrets.token_urlsafe(16)  # the chat endpoint needs a key with the read scope
        server = Server(model, Path(tmp) / "feedback.db", key, Path(tmp) / "server.log", args.threads)
        try:
            server.wait_ready()
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)
            client.chat.completions.create(model="promptrec", messages=[{"role": "user", "content": "hello"}])
            first, again, stream, mismatches = [], [], [], []
            for user in users:
                messages = [{"role": "user", "content": f"I am user {user}. What should I watch next?"}]
                said, seconds = timed(lambda m=messages: client.chat.completions.create(model="promptrec", messages=m))
                first.append(seconds)
                got = [r["item_id"] for r in said.model_extra["recommendations"]]
                if got != expected[user]:
                    mismatches.append({"user": user, "chat": got, "recommend": expected[user]})
                again.append(timed(lambda m=messages: client.chat.completions.create(model="promptrec", messages=m))[1])
                chunks, seconds = timed(lambda m=messages: list(
                    client.chat.completions.create(model="promptrec", messages=m, stream=True)))
                stream.append(seconds)
                streamed = [r["item_id"] for r in chunks[-1].model_extra["recommendations"]]
                if streamed != got:
                    mismatches.append({"user": user, "stream": streamed, "chat": got})

            # Three turns per user: the title of their first recommendation liked, the second
            # disliked, then a genre of the third; the answer must keep to that genre.
            conversation, off_genre, grounded, failures = [], 0, 0, []
            for user in users:
                top = expected[user]
                genre = next(iter(items.loc[top[2], "categories"]))
                messages = [
                    {"role": "user", "content": f"I am user {user}. I liked {items.loc[top[0], 'title']}"},
                    {"role": "user", "content": f"not {items.loc[top[1], 'title']}"},
                    {"role": "user", "content": f"something in genre {genre.lower()}"},
                ]
                said, seconds = timed(lambda m=messages: client.chat.completions.create(model="promptrec", messages=m))
                conversation.append(seconds)
                state = said.model_extra["conversation"]
                ok = state["liked"] == [top[0]] and state["disliked"] == [top[1]]
                grounded += ok
                got = [r["item_id"] for r in said.model_extra["recommendations"]]
                wrong = sum(genre not in list(items.loc[i, "categories"]) for i in got) + (top[0] in got) + (top[1] in got)
                off_genre += wrong
                if wrong or not ok:
                    failures.append({"user": user, "said": [m["content"] for m in messages],
                                     "mentions": state["mentions"], "recommended": got})
        finally:
            server.stop()

    out = {
        "benchmark": "chat_openai",
        "model": str(model),
        "users": len(users),
        "ids_equal_users": len(users) - len({m["user"] for m in mismatches}),
        "mismatches": mismatches,
        "latency_ms": {
            "chat_first_request": summary_ms(first),
            "chat_repeated_request": summary_ms(again),
            "chat_streamed_request": summary_ms(stream),
            "three_turn_conversation": summary_ms(conversation),
        },
        "conversation_grounded_users": grounded,
        "conversation_violations": off_genre,
        "conversation_failures": failures,
        "promptrec_recommend_seconds_all_users": round(cli_seconds, 1),
        "torch_threads": args.threads,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "machine": machine_info(["torch", "transformers", "openai", "rapidfuzz"]),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
