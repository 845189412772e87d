-- Why an upload's import was asked to stop (a cancel request); the importer
-- working on it sees this and stops, recording the reason as its error.
ALTER TABLE uploads ADD COLUMN cancel_reason text;
