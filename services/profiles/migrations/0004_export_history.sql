-- Past exports are listed newest first by service, by table and by audience.
CREATE INDEX exports_service_history_idx ON exports (dcp_service_id, id DESC);
CREATE INDEX exports_table_history_idx ON exports (datasource_id, id DESC) WHERE datasource_id IS NOT NULL;
CREATE INDEX exports_audience_history_idx ON exports (audience_id, id DESC) WHERE audience_id IS NOT NULL;
