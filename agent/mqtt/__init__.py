"""The MQTT side: link, topics, request dispatch, outbox, publisher, embedded broker."""
