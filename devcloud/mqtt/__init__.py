"""MQTT 3.1.1 for devcloud: a sans-I/O codec and an asyncio TLS server."""
