"""fastenc's model classes: transformers' encoder classes of the same names, running fastenc's blocks."""

from fastenc.models.albert import (
    AlbertForMaskedLM,
    AlbertForMultipleChoice,
    AlbertForPreTraining,
    AlbertForQuestionAnswering,
    AlbertForSequenceClassification,
    AlbertForTokenClassification,
    AlbertModel,
)
from fastenc.models.bert import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from fastenc.models.distilbert import (
    DistilBertForMaskedLM,
    DistilBertForMultipleChoice,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)
from fastenc.models.electra import (
    ElectraForMaskedLM,
    ElectraForMultipleChoice,
    ElectraForPreTraining,
    ElectraForQuestionAnswering,
    ElectraForSequenceClassification,
    ElectraForTokenClassification,
    ElectraModel,
)
from fastenc.models.heads import FastencModel
from fastenc.models.roberta import (  # noqa: F401  (made from a table there)
    CamembertForMaskedLM,
    CamembertForMultipleChoice,
    CamembertForQuestionAnswering,
    CamembertForSequenceClassification,
    CamembertForTokenClassification,
    CamembertModel,
    RobertaForMaskedLM,
    RobertaForMultipleChoice,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    XLMRobertaForMaskedLM,
    XLMRobertaForMultipleChoice,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
    XLMRobertaModel,
)

MODEL_CLASSES: dict[str, type[FastencModel]] = {
    cls.__name__: cls
    for cls in (
        BertModel, BertForMaskedLM, BertForPreTraining, BertForNextSentencePrediction, BertForSequenceClassification,
        BertForMultipleChoice, BertForTokenClassification, BertForQuestionAnswering,
        RobertaModel, RobertaForMaskedLM, RobertaForSequenceClassification, RobertaForMultipleChoice,
        RobertaForTokenClassification, RobertaForQuestionAnswering,
        AlbertModel, AlbertForMaskedLM, AlbertForPreTraining, AlbertForSequenceClassification,
        AlbertForMultipleChoice, AlbertForTokenClassification, AlbertForQuestionAnswering,
        ElectraModel, ElectraForMaskedLM, ElectraForPreTraining, ElectraForSequenceClassification,
        ElectraForMultipleChoice, ElectraForTokenClassification, ElectraForQuestionAnswering,
        XLMRobertaModel, XLMRobertaForMaskedLM, XLMRobertaForSequenceClassification, XLMRobertaForMultipleChoice,
        XLMRobertaForTokenClassification, XLMRobertaForQuestionAnswering,
        CamembertModel, CamembertForMaskedLM, CamembertForSequenceClassification, CamembertForMultipleChoice,
        CamembertForTokenClassification, CamembertForQuestionAnswering,
        DistilBertModel, DistilBertForMaskedLM, DistilBertForSequenceClassification, DistilBertForMultipleChoice,
        DistilBertForTokenClassification, DistilBertForQuestionAnswering,
    )
}


def twin_of(cls: type) -> type[FastencModel] | None:
    """fastenc's class for exactly the transformers class `cls` (not a subclass of it), or None."""
    twin = MODEL_CLASSES.get(cls.__name__)
    return twin if twin is not None and twin._fastenc_hf_class is cls else None


__all__ = ["MODEL_CLASSES", "FastencModel", "twin_of", *MODEL_CLASSES]
