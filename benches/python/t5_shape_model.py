"""A t5-small-shaped random T5 (d_model 512, 6 + 6 layers, 8 heads, d_ff 2048, n_positions 4096)
with the vocabulary and tokenizer of the tiny mT5 fixture, and source texts of 512, 1,024 and
2,048 tokens, for the encoder-decoder long-input measurement in docs/reliability.md.

usage: python t5_shape_model.py OUT_DIR   (writes OUT_DIR/model and OUT_DIR/src_N.txt)
"""
import os
import shutil
import sys

import torch
from tokenizers import Tokenizer
from transformers import T5Config, T5ForConditionalGeneration

FIXTURE = os.path.join(os.path.dirname(__file__), "../../tests/fixtures/models/tiny-mt5")
WORDS = "the cat sat on the mat and looked at a dog that ran over the hill while it rained".split()

out = sys.argv[1]
torch.manual_seed(0)
config = T5Config(vocab_size=400, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                  relative_attention_num_buckets=32, relative_attention_max_distance=128,
                  feed_forward_proj="relu", n_positions=4096, pad_token_id=0, eos_token_id=1,
                  decoder_start_token_id=0, dropout_rate=0.0, tie_word_embeddings=True)
T5ForConditionalGeneration(config).eval().save_pretrained(f"{out}/model")
for name in ["tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(f"{FIXTURE}/{name}", f"{out}/model/{name}")
tokenizer = Tokenizer.from_file(f"{out}/model/tokenizer.json")
for n in [512, 1024, 2048]:
    text, i = "", 0
    while len(tokenizer.encode(text).ids) < n - 1:
        text += ("" if not text else " ") + WORDS[i % len(WORDS)]
        i += 1
    with open(f"{out}/src_{n}.txt", "w") as f:
        f.write(text)
