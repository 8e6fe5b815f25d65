"""ALBERT: factorised embeddings (embedding_size, then embedding_hidden_mapping_in) and layers shared across depth:
num_hidden_groups groups of inner_group_num layers, layer i running group int(i / (num_hidden_layers /
num_hidden_groups)) as transformers does. Module names follow transformers' AlbertAttention / AlbertLayer."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastenc.configuration import AlbertConfig
from fastenc.modeling_utils import AlbertForPreTrainingOutput, ModelOutput
from fastenc.models.layers import (
    AttentionMask,
    Embeddings,
    EncoderModel,
    HeadModel,
    MaskedLMHead,
    OptTensor,
    QKVAttention,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
    check_activation,
    linear_act,
    linear_act_norm,
    linear_add_norm,
    mlm_rows,
    run_layers,
    sparse_prediction_flag,
    token_loss,
)


class AlbertAttention(QKVAttention):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.attention_dropout = nn.Dropout(config.attention_probs_dropout_prob)
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> tuple[torch.Tensor, Any]:
        context, probs = self.attend(x, mask, self.attention_dropout.p if self.training else 0.0)
        p = self.output_dropout.p if self.training else 0.0
        return linear_add_norm(context, self.dense, x, self.LayerNorm, p), probs


class AlbertLayer(nn.Module):
    """attention, then LayerNorm(ffn_output(act(ffn(h))) + h); transformers applies no dropout to the FFN."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        check_activation(config.hidden_act)
        self.full_layer_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = AlbertAttention(config)
        self.ffn = nn.Linear(config.hidden_size, config.intermediate_size)
        self.ffn_output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = config.hidden_act
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, mask: AttentionMask) -> tuple[torch.Tensor, Any]:
        h, probs = self.attention(x, mask)
        return linear_add_norm(linear_act(h, self.ffn, self.act), self.ffn_output, h, self.full_layer_layer_norm,
                               0.0), probs


class AlbertLayerGroup(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.albert_layers = nn.ModuleList([AlbertLayer(config) for _ in range(config.inner_group_num)])


class AlbertTransformer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self.embedding_hidden_mapping_in = nn.Linear(config.embedding_size, config.hidden_size)
        self.albert_layer_groups = nn.ModuleList([AlbertLayerGroup(config) for _ in range(config.num_hidden_groups)])
        self.gradient_checkpointing = False

    def layer_sequence(self) -> list[nn.Module]:
        """The AlbertLayer modules in execution order (shared modules appear several times)."""
        cfg = self.config
        groups = [int(i / (cfg.num_hidden_layers / cfg.num_hidden_groups)) for i in range(cfg.num_hidden_layers)]
        return [layer for g in groups for layer in self.albert_layer_groups[g].albert_layers]

    def forward(self, h: torch.Tensor, mask: AttentionMask, output_hidden_states: bool):
        h = self.embedding_hidden_mapping_in(h)
        return run_layers(self.layer_sequence(), h, mask, output_hidden_states,
                          self.gradient_checkpointing and self.training)


class AlbertPreTrainedModel(HeadModel):
    config_class = AlbertConfig
    base_model_prefix = "albert"


class AlbertModel(EncoderModel):
    config_class = AlbertConfig
    base_model_prefix = "albert"

    def __init__(self, config: Any, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = Embeddings(self.config)
        self.encoder = AlbertTransformer(self.config)
        self.pooler = nn.Linear(self.config.hidden_size, self.config.hidden_size) if add_pooling_layer else None
        self.pooler_activation = nn.Tanh() if add_pooling_layer else None
        self.post_init()

    def pool(self, h: torch.Tensor) -> torch.Tensor | None:
        return torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else None


class AlbertMLMHead(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        check_activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.decoder = nn.Linear(config.embedding_size, config.vocab_size)
        self.act = config.hidden_act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(linear_act_norm(h, self.dense, self.act, self.LayerNorm))


class AlbertSOPHead(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))


_MLM_TIES = {"predictions.decoder.weight": "albert.embeddings.word_embeddings.weight",
             "predictions.decoder.bias": "predictions.bias"}


class AlbertForPreTraining(AlbertPreTrainedModel):
    _tied_weights_keys = _MLM_TIES

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.albert = AlbertModel(self.config)
        self.predictions = AlbertMLMHead(self.config)
        self.sop_classifier = AlbertSOPHead(self.config)
        self.post_init()

    def forward(
        self,
        input_ids: OptTensor = None,
        attention_mask: OptTensor = None,
        token_type_ids: OptTensor = None,
        position_ids: OptTensor = None,
        inputs_embeds: OptTensor = None,
        labels: OptTensor = None,
        sentence_order_label: OptTensor = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad: bool | None = None,
        sparse_prediction: bool | None = None,
    ) -> ModelOutput | tuple:
        """MLM + sentence-order prediction; the loss needs both labels and sentence_order_label. sparse_prediction as
        in AlbertForMaskedLM: with labels, prediction_logits holds the labelled positions only, [num_labelled,
        vocab]."""
        enc = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                          output_hidden_states, unpad)
        h, labels = mlm_rows(enc.last_hidden_state, labels, sparse_prediction_flag(self.config, sparse_prediction))
        scores = self.predictions(h)
        sop = self.sop_classifier(enc.pooler_output)
        loss = None
        if labels is not None and sentence_order_label is not None:
            loss = token_loss(scores, labels) + F.cross_entropy(sop.view(-1, 2), sentence_order_label.view(-1))
        return self.finish(AlbertForPreTrainingOutput(loss, scores, sop, enc.hidden_states, enc.attentions),
                           return_dict)


class AlbertForMaskedLM(AlbertPreTrainedModel, MaskedLMHead):
    _tied_weights_keys = _MLM_TIES

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.albert = AlbertModel(self.config, add_pooling_layer=False)
        self.predictions = AlbertMLMHead(self.config)
        self.post_init()

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.predictions(h)


class AlbertForSequenceClassification(AlbertPreTrainedModel, SequenceClassificationHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.albert = AlbertModel(self.config)
        self.dropout = nn.Dropout(self.config.classifier_dropout_prob)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()

    def head_logits(self, enc: ModelOutput) -> torch.Tensor:
        return self.classifier(self.dropout(enc.pooler_output))


class AlbertForTokenClassification(AlbertPreTrainedModel, TokenClassificationHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.albert = AlbertModel(self.config, add_pooling_layer=False)
        p = self.config.classifier_dropout_prob
        self.dropout = nn.Dropout(p if p is not None else self.config.hidden_dropout_prob)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()


class AlbertForQuestionAnswering(AlbertPreTrainedModel, QuestionAnsweringHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.albert = AlbertModel(self.config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()
