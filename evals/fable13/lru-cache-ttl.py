"""A thread-safe LRU cache with a time-to-live per entry.

An OrderedDict keeps recency order (move_to_end on every hit, popitem(last=False) to evict the
least recently used); each entry stores its expiry time, checked on access with an injectable
clock. One lock guards every operation, so concurrent get/put never see a torn state.
"""
import threading
import time
from collections import OrderedDict


class LRUCache:
    def __init__(self, capacity: int, ttl: float, clock=time.monotonic):
        if capacity <= 0 or ttl <= 0:
            raise ValueError("capacity and ttl must be positive")
        self.capacity, self.ttl, self.clock = capacity, ttl, clock
        self._data = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return default
            value, expires = item
            if self.clock() >= expires:
                del self._data[key]
                return default
            self._data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            self._data[key] = (value, self.clock() + self.ttl)
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)  # evict the least recently used

    def __len__(self) -> int:
        with self._lock:
            now = self.clock()
            for k in [k for k, (_, e) in self._data.items() if now >= e]:
                del self._data[k]
            return len(self._data)
