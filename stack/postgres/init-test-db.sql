-- docker-compose.kafka.yml: runs once when the postgres container initialises its volume.
-- (The local stack, stack/stack.py, creates both databases itself.)
CREATE DATABASE blogstream_test OWNER blogstream;
