"""An audience's outcome for one user as the v1 API shows it, in one place for the service and the gateway."""

from __future__ import annotations

import orjson

from services.domain.conditions.evaluate import Outcome


def outcome_document(audience_id: int, name: str, outcome: Outcome, *, saved: bool) -> bytes:
    """One outcome's JSON document, as `EvaluateAudiencesResponse.audiences_json` holds it."""
    return orjson.dumps(
        {
            # An unsaved audience has neither id nor name yet.
            "audienceId": str(audience_id) if saved else None,
            "name": name if saved else None,
            "matched": outcome.matched,
            "conditions": [
                {
                    "path": leaf.path,
                    "datasourceId": str(leaf.datasource_id),
                    "attributeId": str(leaf.attribute_id),
                    "matchType": leaf.match_type,
                    "held": leaf.held,
                    "usable": leaf.usable,
                }
                for leaf in outcome.leaves
            ],
        }
    )
