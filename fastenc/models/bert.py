"""BERT: the base encoder and its five heads, with transformers' module tree (bert.*, cls.*) and tied MLM decoder.

The BERT layer stack lives in layers.py (RoBERTa and ELECTRA reuse it); this file adds the pooler use and the heads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastenc.configuration import BertConfig
from fastenc.modeling_utils import BertForPreTrainingOutput, ModelOutput
from fastenc.models.layers import (
    Embeddings,
    Encoder,
    EncoderModel,
    HeadModel,
    MaskedLMHead,
    OptTensor,
    Pooler,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
    check_activation,
    classifier_dropout,
    linear_act_norm,
    mlm_rows,
    sparse_prediction_flag,
    token_loss,
)


class BertPreTrainedModel(HeadModel):
    config_class = BertConfig
    base_model_prefix = "bert"


class BertModel(EncoderModel):
    config_class = BertConfig
    base_model_prefix = "bert"

    def __init__(self, config: Any, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = Embeddings(self.config)
        self.encoder = Encoder(self.config)
        self.pooler = Pooler(self.config) if add_pooling_layer else None
        self.post_init()


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        check_activation(config.hidden_act)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = config.hidden_act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return linear_act_norm(h, self.dense, self.act, self.LayerNorm)


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(h))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.predictions(h)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)

    def forward(self, h: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.predictions(h), self.seq_relationship(pooled)


_MLM_TIES = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
             "cls.predictions.decoder.bias": "cls.predictions.bias"}


class BertForMaskedLM(BertPreTrainedModel, MaskedLMHead):
    _tied_weights_keys = _MLM_TIES

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.bert = BertModel(self.config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(self.config)
        self.post_init()

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.cls(h)


class BertForPreTraining(BertPreTrainedModel):
    _tied_weights_keys = _MLM_TIES

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.bert = BertModel(self.config)
        self.cls = BertPreTrainingHeads(self.config)
        self.post_init()

    def forward(
        self,
        input_ids: OptTensor = None,
        attention_mask: OptTensor = None,
        token_type_ids: OptTensor = None,
        position_ids: OptTensor = None,
        inputs_embeds: OptTensor = None,
        labels: OptTensor = None,
        next_sentence_label: OptTensor = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad: bool | None = None,
        sparse_prediction: bool | None = None,
    ) -> ModelOutput | tuple:
        """MLM + next-sentence prediction; the loss needs both labels and next_sentence_label. sparse_prediction as in
        BertForMaskedLM: with labels, prediction_logits holds the labelled positions only, [num_labelled, vocab]."""
        enc = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                          output_hidden_states, unpad)
        h, labels = mlm_rows(enc.last_hidden_state, labels, sparse_prediction_flag(self.config, sparse_prediction))
        scores, nsp = self.cls(h, enc.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = token_loss(scores, labels) + F.cross_entropy(nsp.view(-1, 2), next_sentence_label.view(-1))
        return self.finish(BertForPreTrainingOutput(loss, scores, nsp, enc.hidden_states, enc.attentions),
                           return_dict)


class BertForSequenceClassification(BertPreTrainedModel, SequenceClassificationHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.bert = BertModel(self.config)
        self.dropout = classifier_dropout(self.config)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()

    def head_logits(self, enc: ModelOutput) -> torch.Tensor:
        return self.classifier(self.dropout(enc.pooler_output))


class BertForTokenClassification(BertPreTrainedModel, TokenClassificationHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.bert = BertModel(self.config, add_pooling_layer=False)
        self.dropout = classifier_dropout(self.config)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()


class BertForQuestionAnswering(BertPreTrainedModel, QuestionAnsweringHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.bert = BertModel(self.config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()
