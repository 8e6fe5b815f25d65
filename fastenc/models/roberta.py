"""RoBERTa: BERT's layers with fairseq positions (counted from padding_idx + 1), a tanh sentence head on <s>, and
an LM head (dense, exact gelu, layer_norm, tied decoder)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastenc.configuration import RobertaConfig
from fastenc.modeling_utils import ModelOutput
from fastenc.models.layers import (
    ClassificationHead,
    Embeddings,
    Encoder,
    EncoderModel,
    HeadModel,
    MaskedLMHead,
    Pooler,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
    classifier_dropout,
    linear_act_norm,
)


class RobertaPreTrainedModel(HeadModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"


class RobertaModel(EncoderModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"

    def __init__(self, config: Any, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = Embeddings(self.config, roberta_positions=True)
        self.encoder = Encoder(self.config)
        self.pooler = Pooler(self.config) if add_pooling_layer else None
        self.post_init()


class RobertaLMHead(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(linear_act_norm(h, self.dense, "gelu", self.layer_norm))


class RobertaForMaskedLM(RobertaPreTrainedModel, MaskedLMHead):
    _tied_weights_keys = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
                          "lm_head.decoder.bias": "lm_head.bias"}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(self.config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(self.config)
        self.post_init()

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h)


class RobertaForSequenceClassification(RobertaPreTrainedModel, SequenceClassificationHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.roberta = RobertaModel(self.config, add_pooling_layer=False)
        self.classifier = ClassificationHead(self.config, "tanh")
        self.post_init()

    def head_logits(self, enc: ModelOutput) -> torch.Tensor:
        return self.classifier(enc.last_hidden_state)


class RobertaForTokenClassification(RobertaPreTrainedModel, TokenClassificationHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.roberta = RobertaModel(self.config, add_pooling_layer=False)
        self.dropout = classifier_dropout(self.config)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()


class RobertaForQuestionAnswering(RobertaPreTrainedModel, QuestionAnsweringHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.roberta = RobertaModel(self.config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()
