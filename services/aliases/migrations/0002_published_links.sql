-- The aliases service's read contract for co-located readers: audience
-- membership and exports (services/profiles/membership.py) join identity
-- links in SQL rather than asking for them user by user. They read this view,
-- never the links table, so that table's layout can change (columns added,
-- split or renamed) without breaking them: a change keeps this view's columns
-- and meaning, or adds a new view beside it.
CREATE OR REPLACE VIEW published_links AS
SELECT optimizely_user_id, dcp_service_id, datasource_id, customer_id
FROM links;

COMMENT ON VIEW published_links IS
    'Read contract of the aliases service for co-located readers (audience membership, exports): '
    'which customer id of table datasource_id is Optimizely user optimizely_user_id in DCP service dcp_service_id.';
