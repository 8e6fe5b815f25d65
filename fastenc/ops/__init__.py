"""The public op functions. Each `<op>` runs through fastenc.dispatch.run_op on a backend (see fastenc.backends);
`<op>_ref` is its pure-PyTorch reference: the CPU path, the test oracle and the benchmark baseline."""

from fastenc.ops.add_layer_norm import add_layer_norm, add_layer_norm_ref
from fastenc.ops.attention import attention, attention_ref
from fastenc.ops.bias_gelu import bias_gelu, bias_gelu_ref
from fastenc.ops.embeddings import embeddings, embeddings_ref
from fastenc.ops.gated_act import gated_act, gated_act_ref
from fastenc.ops.gelu_layer_norm import gelu_layer_norm, gelu_layer_norm_ref
from fastenc.ops.rotary import rotary, rotary_ref

__all__ = [
    "add_layer_norm",
    "add_layer_norm_ref",
    "attention",
    "attention_ref",
    "bias_gelu",
    "bias_gelu_ref",
    "embeddings",
    "embeddings_ref",
    "gated_act",
    "gated_act_ref",
    "gelu_layer_norm",
    "gelu_layer_norm_ref",
    "rotary",
    "rotary_ref",
]
