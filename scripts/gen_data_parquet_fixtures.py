#!/usr/bin/env python3
"""Parquet fixtures for data/tests/readers.rs, written with pyarrow the way Hugging Face
`datasets` publishes a chat dataset (a `messages` column of list<struct>), plus the same rows as
JSON lines (the "twin" the test compares against) and two malformed files.

Run by hand from the repository root (needs `pip install pyarrow`; CI only reads the output):
    python3 scripts/gen_data_parquet_fixtures.py
"""
import json, os
import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "tests", "fixtures", "parquet")
os.makedirs(os.path.join(OUT, "bad"), exist_ok=True)

WEATHER = json.dumps([{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])

rows = [
    {"id": "conv-1", "tools": WEATHER, "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "reasoning_content": "I should call the weather tool.",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, cloudy"},
        {"role": "assistant", "content": "It is 18 C and cloudy in Paris."},
        {"role": "user", "content": "And should I take an umbrella?"},
        {"role": "assistant", "content": "Not needed: cloudy, but no rain expected."},
    ]},
    {"id": "conv-2", "tools": None, "messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "<think>A short greeting.</think>Hi!"},
    ]},
    {"id": "conv-3", "tools": None, "messages": [
        {"role": "user", "content": "List the files."},
        {"role": "assistant", "content": "Listing them.",
         "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "ls", "arguments": "{\"path\": \".\"}"}}]},
        {"role": "tool", "tool_call_id": "c9", "content": "a.txt\nb.txt"},
        {"role": "assistant", "content": "Two files: a.txt and b.txt."},
    ]},
]

# pyarrow fills absent struct fields with nulls, as `datasets` does.
pq.write_table(pa.Table.from_pylist(rows), os.path.join(OUT, "chat.parquet"), compression="snappy")
with open(os.path.join(OUT, "chat-twin.jsonl"), "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")

# A dataset without a conversation column, and one whose `messages` column holds integers.
pq.write_table(pa.table({"text": ["hello", "world"]}), os.path.join(OUT, "bad", "no-column.parquet"))
pq.write_table(pa.table({"messages": pa.array([1, 2], pa.int64())}), os.path.join(OUT, "bad", "wrong-type.parquet"))
print("parquet fixtures written to", OUT)
