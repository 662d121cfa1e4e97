"""The Avro contract between the stages: schemas, encoding, and the rules a request must meet."""
