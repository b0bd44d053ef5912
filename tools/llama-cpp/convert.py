"""llama.cpp's own convert_hf_to_gguf.py on a `gptoss synth` checkpoint.

The synth checkpoint has no tokenizer files, which the converter reads for the vocabulary;
speed does not depend on the vocabulary's strings, so this takes them (tokens, types, merges)
from the tiny fixture's GGUF, made by the same converter, padded to the config's vocab_size.
Everything else, the MXFP4 expert repacking included, is the converter's own.

    python convert.py LLAMA_CPP_DIR FIXTURE_GGUF SYNTH_DIR --outtype bf16 --outfile OUT.gguf
"""
import sys

llama_cpp, fixture = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
sys.path.insert(0, llama_cpp)
sys.path.insert(0, f"{llama_cpp}/gguf-py")

import convert_hf_to_gguf  # noqa: E402
from conversion import gpt_oss  # noqa: E402
from gguf import GGUFReader  # noqa: E402


def set_vocab(self):
    fields = GGUFReader(fixture).fields

    def strings(key):
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = fields[key]
        return [int(f.parts[i][0]) for i in f.data]

    tokens, types = strings("tokenizer.ggml.tokens"), ints("tokenizer.ggml.token_type")
    n = self.hparams["vocab_size"]
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n)]
    types += [5] * (n - len(types))  # unused
    w = self.gguf_writer
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-4o")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(strings("tokenizer.ggml.merges"))
    w.add_eos_token_id(int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0]))


gpt_oss.GptOssModel.set_vocab = set_vocab
convert_hf_to_gguf.main()
