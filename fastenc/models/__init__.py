"""The four encoders and their task heads, named and laid out as in transformers."""

from fastenc.models.albert import (
    AlbertForMaskedLM,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
)
from fastenc.models.bert import (
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from fastenc.models.electra import (
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    ElectraModel,
)
from fastenc.models.roberta import (
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
)

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        BertModel, BertForSequenceClassification, BertForTokenClassification, BertForQuestionAnswering,
        BertForMaskedLM, BertForPreTraining,
        RobertaModel, RobertaForSequenceClassification, RobertaForTokenClassification, RobertaForQuestionAnswering,
        RobertaForMaskedLM,
        AlbertModel, AlbertForSequenceClassification, AlbertForTokenClassification, AlbertForQuestionAnswering,
        AlbertForMaskedLM, AlbertForPreTraining,
        ElectraModel, ElectraForSequenceClassification, ElectraForTokenClassification, ElectraForQuestionAnswering,
        ElectraForMaskedLM, ElectraForPreTraining,
    )
}

__all__ = ["MODEL_CLASSES", *MODEL_CLASSES]
