"""Transport: MQTT links (paho-mqtt 2.x) and the bounded frame publisher."""
