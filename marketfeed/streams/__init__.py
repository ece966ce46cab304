"""Getting ticks to clients and to other processes: the fan-out hub, SSE, WebSocket, and the buses."""
