"""paho-mqtt 2.x links: reconnect with backoff, last will, TLS, auth, resubscribe on connect,
and a publisher with a bounded frame queue that drops the oldest frame when the broker or link
cannot keep up.

::

    edge thread --submit(frame packets)--> deque(maxlen=queue_frames) --worker--> paho --> broker
                         full? drop oldest frame, count it         waits while > max_inflight unacked
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from discover.sdk.errors import DiscoverError
from discover.sdk.transport.broker import BrokerConfig
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

# CONNACK codes (3.1.1 and 5) that mean our credentials or client id are not accepted
_CREDENTIAL_REFUSALS = {2, 4, 5, 133, 134, 135, 138}

MessageHandler = Callable[[str, bytes, bool], None]  # topic, payload, retained


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


class MqttLink:
    """One MQTT connection kept alive in paho's network thread.

    ``on_connect`` callbacks run after every (re)connect, e.g. to publish retained state;
    subscriptions are renewed on every connect too.
    """

    def __init__(
        self,
        broker: BrokerConfig,
        *,
        client_id: str | None = None,
        will: Will | None = None,
        subscriptions: Sequence[str] = (),
        on_message: MessageHandler | None = None,
        on_connect: Sequence[Callable[[MqttLink], None]] = (),
        max_inflight: int = 64,
    ) -> None:
        """``client_id``: a stable id makes the session persistent when ``broker.persistent``
        (clean start off, so the broker queues QoS 1 messages for us while we are away);
        without one the id is random and the session clean."""
        self.broker = broker
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        self.on_connect_hooks = list(on_connect)
        self.connected = threading.Event()
        self.refused = threading.Event()  # the broker rejected our credentials or identity
        self.counters: Counter[str] = Counter()
        self.last_error: str | None = None
        self._unacked = 0
        self._ack_cond = threading.Condition()
        self._stopping = False
        proto = mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311
        self.persistent = bool(client_id) and broker.persistent
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"discover-{uuid.uuid4().hex[:10]}",
            protocol=proto,
            **({} if proto == mqtt.MQTTv5 else {"clean_session": not self.persistent}),
        )
        c = self.client
        c.max_inflight_messages_set(max_inflight)
        # hard bound on paho's own queue (messages held across a reconnect count here)
        c.max_queued_messages_set(max_inflight * 16)
        c.reconnect_delay_set(broker.reconnect_min_s, broker.reconnect_max_s)
        user = broker.resolved_username()
        if user is not None:
            pw = broker.password()
            c.username_pw_set(user, pw.get_secret_value() if pw else None)
        if broker.use_tls:
            t = broker.tls
            c.tls_set(
                ca_certs=str(t.ca_file) if t and t.ca_file else None,
                certfile=str(t.cert_file) if t and t.cert_file else None,
                keyfile=str(t.key_file) if t and t.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            if t and t.insecure:
                c.tls_insecure_set(True)
        if will is not None:
            c.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish

    # -- paho callbacks (network thread) ------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:  # noqa: ANN001
        if reason.is_failure:
            self.last_error = str(reason)
            self.counters["connect_failures"] += 1
            log.info("broker %s refused the connection: %s", self.broker.describe(), reason)
            if reason.value in _CREDENTIAL_REFUSALS:
                self.refused.set()  # retrying cannot help: stop and say why
                client.disconnect()
            return
        self.counters["connects"] += 1
        for t in self.subscriptions:
            client.subscribe(t, qos=self.broker.qos)
        for hook in self.on_connect_hooks:
            hook(self)
        self.connected.set()
        if self.counters["connects"] > 1:
            log.info("reconnected to %s", self.broker.describe())

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:  # noqa: ANN001
        was = self.connected.is_set()
        self.connected.clear()
        with self._ack_cond:
            self._ack_cond.notify_all()  # waiters re-check the connection
        if was and not self._stopping:
            self.counters["disconnects"] += 1
            log.warning("lost broker %s (%s); reconnecting", self.broker.describe(), reason)

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        self.counters["received"] += 1
        if self.on_message is not None:
            try:
                self.on_message(msg.topic, msg.payload, bool(msg.retain))
            except Exception:  # a handler bug must not kill the network thread
                self.counters["handler_errors"] += 1
                log.exception("message handler failed on %s", msg.topic)

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:  # noqa: ANN001
        with self._ack_cond:
            self._unacked = max(0, self._unacked - 1)
            self._ack_cond.notify_all()

    # -- API ----------------------------------------------------------------------------------

    def start(self, wait_s: float | None = None) -> MqttLink:
        """Connect in the background (retrying with backoff); optionally wait for the first
        connection and raise a clear error if it does not come."""
        kw: dict = {}
        if self.broker.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.broker.session_expiry_s if self.persistent else 0
            kw = {"clean_start": not self.persistent, "properties": props}
        try:
            self.client.connect_async(self.broker.host, self.broker.port,
                                      keepalive=self.broker.keepalive, **kw)
        except (OSError, ValueError) as e:
            raise DiscoverError(f"cannot reach broker {self.broker.describe()}: {e}") from None
        self.client.loop_start()
        if wait_s is None:
            return self
        try:
            ok = self.wait_connected(wait_s)
        except DiscoverError:
            self.stop()
            raise
        if not ok:
            self.stop()
            why = f" ({self.last_error})" if self.last_error else ""
            raise DiscoverError(
                f"broker {self.broker.describe()} unreachable after {wait_s:g} s{why}; "
                "check --broker and that the broker is running")
        return self

    def wait_connected(self, timeout: float) -> bool:
        """Wait for a connection; False on timeout, the refusal error if credentials failed."""
        deadline = time.monotonic() + timeout
        while not self.connected.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if self.refused.is_set():
                raise self.refusal_error()
            if time.monotonic() >= deadline:
                return False
        return True

    def refusal_error(self) -> DiscoverError:
        """The one-line error for a broker that rejected our credentials."""
        return DiscoverError(
            f"broker {self.broker.describe()} refused the connection ({self.last_error}); "
            "check broker.username and the password (DISCOVER_BROKER_PASSWORD or "
            "broker.password_file)")

    def publish(self, topic: str, payload: bytes, *, qos: int | None = None,
                retain: bool = False) -> bool:
        """Hand one message to paho; False if it was refused (not connected, queue full)."""
        q = self.broker.qos if qos is None else qos
        info = self.client.publish(topic, payload, qos=q, retain=retain)
        # with QoS>0 paho keeps a message published while disconnected and sends it on reconnect
        queued = info.rc == mqtt.MQTT_ERR_SUCCESS or (q > 0 and info.rc == mqtt.MQTT_ERR_NO_CONN)
        if not queued:
            self.counters["publish_refused"] += 1
            return False
        if q > 0:
            with self._ack_cond:
                self._unacked += 1
        self.counters["published"] += 1
        self.counters["published_bytes"] += len(payload)
        return True

    def wait_unacked_below(self, limit: int, timeout: float) -> bool:
        """Block while more than ``limit`` QoS>0 messages wait for their ack."""
        deadline = time.monotonic() + timeout
        with self._ack_cond:
            while self._unacked > limit:
                left = deadline - time.monotonic()
                if left <= 0 or not self.connected.is_set():
                    return False
                self._ack_cond.wait(min(left, 0.5))
        return True

    def stop(self) -> None:
        self._stopping = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self.connected.clear()


class FramePublisher:
    """Publishes whole frames (lists of ``(topic, payload)``) in order from a bounded queue.

    When the queue is full the oldest queued frame is dropped and counted (``frames_dropped``),
    so memory stays bounded while the broker is down or slow; newest data wins.
    """

    def __init__(self, link: MqttLink, *, queue_frames: int = 32, max_unacked: int = 256) -> None:
        self.link = link
        self.queue: deque[tuple[int, list[tuple[str, bytes]]]] = deque()
        self.queue_frames = queue_frames
        self.max_unacked = max_unacked
        self.counters: Counter[str] = Counter()
        self.on_published: Callable[[int, float], None] | None = None
        #: called with a frame's index when it is dropped or only partly published
        self.on_dropped: Callable[[int], None] | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="discover-publisher", daemon=True)
        self._thread.start()

    def submit(self, frame_index: int, messages: list[tuple[str, bytes]]) -> None:
        with self._cond:
            while len(self.queue) >= self.queue_frames:
                self._dropped(self.queue.popleft()[0])
                self.counters["frames_dropped"] += 1
            self.queue.append((frame_index, messages))
            self.counters["frames_queued"] += 1
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.queue and not self._closing:
                    self._cond.wait()
                if not self.queue and self._closing:
                    return
            if not self.link.connected.wait(0.2):
                continue
            if not self.link.wait_unacked_below(self.max_unacked, 1.0):
                continue
            with self._cond:
                if not self.queue:
                    continue
                index, messages = self.queue.popleft()
            sent = 0
            for topic, payload in messages:
                if not self.link.publish(topic, payload):
                    break
                sent += 1
            if sent == len(messages):
                self.counters["frames_published"] += 1
                self.counters["bytes_published"] += sum(len(p) for _, p in messages)
                if self.on_published is not None:
                    self.on_published(index, time.time())
            else:
                self.counters["frames_partial"] += 1
                self._dropped(index)

    def _dropped(self, index: int) -> None:
        if self.on_dropped is not None:
            self.on_dropped(index)

    def close(self, timeout: float = 30.0) -> bool:
        """Publish what is queued (up to ``timeout``), wait for acks, stop the worker."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        left = max(0.0, deadline - time.monotonic())
        ok = self.link.wait_unacked_below(0, left) if self.link.connected.is_set() else False
        with self._cond:
            self.counters["frames_dropped"] += len(self.queue)
            self.queue.clear()
        return ok and not self._thread.is_alive()
