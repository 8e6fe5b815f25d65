"""ELECTRA: BERT's layers after an embeddings_project Linear (when embedding_size != hidden_size), no pooler; the
generator MLM head (dense to embedding_size, gelu, LayerNorm, tied generator_lm_head) and the replaced-token
discriminator (dense, hidden_act, dense_prediction) whose loss runs over attention_mask positions."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastenc.configuration import ElectraConfig
from fastenc.modeling_utils import BaseModelOutput, ElectraForPreTrainingOutput, ModelOutput
from fastenc.models.layers import (
    ClassificationHead,
    Embeddings,
    Encoder,
    EncoderModel,
    HeadModel,
    MaskedLMHead,
    OptTensor,
    QuestionAnsweringHead,
    SequenceClassificationHead,
    TokenClassificationHead,
    check_activation,
    classifier_dropout,
    linear_act,
    linear_act_norm,
)


class ElectraPreTrainedModel(HeadModel):
    config_class = ElectraConfig
    base_model_prefix = "electra"


class ElectraModel(EncoderModel):
    config_class = ElectraConfig
    base_model_prefix = "electra"
    output_class = BaseModelOutput

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.embeddings = Embeddings(self.config)
        if self.config.embedding_size != self.config.hidden_size:
            self.embeddings_project = nn.Linear(self.config.embedding_size, self.config.hidden_size)
        self.encoder = Encoder(self.config)
        self.post_init()

    def project(self, h: torch.Tensor) -> torch.Tensor:
        project = getattr(self, "embeddings_project", None)
        return project(h) if project is not None else h


class ElectraDiscriminatorPredictions(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        check_activation(config.hidden_act)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense_prediction = nn.Linear(config.hidden_size, 1)
        self.act = config.hidden_act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(linear_act(h, self.dense, self.act)).squeeze(-1)


class ElectraGeneratorPredictions(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return linear_act_norm(h, self.dense, "gelu", self.LayerNorm)


class ElectraForPreTraining(ElectraPreTrainedModel):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.electra = ElectraModel(self.config)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(self.config)
        self.post_init()

    def forward(
        self,
        input_ids: OptTensor = None,
        attention_mask: OptTensor = None,
        token_type_ids: OptTensor = None,
        position_ids: OptTensor = None,
        inputs_embeds: OptTensor = None,
        labels: OptTensor = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        unpad: bool | None = None,
    ) -> ModelOutput | tuple:
        """Replaced-token detection: labels [B, S] (1 = replaced); the BCE loss covers attention_mask == 1 positions."""
        enc = self.encode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                          output_hidden_states, unpad)
        logits = self.discriminator_predictions(enc.last_hidden_state)
        loss = None
        if labels is not None:
            seq = enc.last_hidden_state.shape[1]
            if attention_mask is not None:
                active = attention_mask.view(-1, seq) == 1
                loss = F.binary_cross_entropy_with_logits(logits.view(-1, seq)[active], labels[active].float())
            else:
                loss = F.binary_cross_entropy_with_logits(logits.view(-1, seq), labels.float())
        return self.finish(ElectraForPreTrainingOutput(loss, logits, enc.hidden_states, enc.attentions), return_dict)


class ElectraForMaskedLM(ElectraPreTrainedModel, MaskedLMHead):
    _tied_weights_keys = {"generator_lm_head.weight": "electra.embeddings.word_embeddings.weight"}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.electra = ElectraModel(self.config)
        self.generator_predictions = ElectraGeneratorPredictions(self.config)
        self.generator_lm_head = nn.Linear(self.config.embedding_size, self.config.vocab_size)
        self.post_init()

    def mlm_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.generator_lm_head(self.generator_predictions(h))


class ElectraForSequenceClassification(ElectraPreTrainedModel, SequenceClassificationHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.electra = ElectraModel(self.config)
        self.classifier = ClassificationHead(self.config, "gelu")
        self.post_init()

    def head_logits(self, enc: ModelOutput) -> torch.Tensor:
        return self.classifier(enc.last_hidden_state)


class ElectraForTokenClassification(ElectraPreTrainedModel, TokenClassificationHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.electra = ElectraModel(self.config)
        self.dropout = classifier_dropout(self.config)
        self.classifier = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()


class ElectraForQuestionAnswering(ElectraPreTrainedModel, QuestionAnsweringHead):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = self.config.num_labels
        self.electra = ElectraModel(self.config)
        self.qa_outputs = nn.Linear(self.config.hidden_size, self.config.num_labels)
        self.post_init()
