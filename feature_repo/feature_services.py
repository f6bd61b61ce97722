"""Feature services: the versioned set of stored features a model reads.

`fraud_scoring_v1` lists, in order, the stored inputs of the model vector; the model's
own feature list (`core.features.MODEL_FEATURES`) is what `model_vector` computes from
them plus the request, and is stored with each registered model version.
"""

from feast import FeatureService, FeatureView

from core.feature_engine import CARD_VIEW, DEVICE_VIEW, MERCHANT_VIEW

FRAUD_SCORING_SERVICE = "fraud_scoring_v1"


def build_feature_services(views: dict[str, FeatureView]) -> list[FeatureService]:
    return [
        FeatureService(
            name=FRAUD_SCORING_SERVICE,
            features=[views[CARD_VIEW], views[MERCHANT_VIEW], views[DEVICE_VIEW]],
            description="Inputs of the fraud-scoring model: card, merchant and device snapshots.",
            owner="fraud-ml@example.com",
        )
    ]
