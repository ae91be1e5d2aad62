"""The root of every error edgekernel raises on purpose.

    EdgeKernelError
    ├── ProtocolError        protocol: a topic, envelope or payload that breaks the wire contract (.reason)
    ├── ConfigError          config: a config file that does not validate (.problems, each with file:line)
    ├── LinkError            link: the broker or another transport failed us
    │   ├── BrokerError      a private Mosquitto could not be found, started or stopped
    │   ├── NotConnectedError  not connected (yet, or any more) when the operation needs it
    │   ├── PacketTooLargeError  a message larger than the broker's Maximum Packet Size (not sent)
    │   ├── BrokerLimitError  the broker cannot do what the config asks (.setting), e.g. shared subscriptions
    │   ├── OutboxError      the device's durable outbox cannot be opened or written (OutboxFullError,
    │   │                    OutboxStorageError: a full or failing disk)
    │   └── CoapError        a CoAP request failed (.code: "4.04", None when no answer)
    ├── StateError           device: the device's state file cannot be opened or written
    ├── ModelError           device.models: a model cannot be verified, loaded or run (.model)
    │   ├── ModelFileError   missing, truncated, corrupt, or not matching its spec (sha256, tensors)
    │   ├── RuntimeUnavailableError  the runtime it needs is not installed here
    │   ├── InferenceError   the runtime failed, or the inputs do not fit the model
    │   ├── BudgetError      it does not fit the memory budget, even after evictions
    │   ├── UnknownModelError  no model of that name is configured
    │   └── QuantizationError  `model quantize` could not quantize it
    ├── SchedulerError       device.scheduler: a request was refused or could not be served
    │   ├── OverloadError    queue full, or shed by the SLO controller (.depth, .limit)
    │   ├── DeadlineError    cannot meet its deadline: at admission or expired in the queue (.stage)
    │   ├── QuotaError       the agent is over its concurrent-request limit
    │   └── SchedulerClosedError  the scheduler stopped
    ├── DriverError          device.drivers: a sensor's driver cannot be found, configured or run (.driver,
    │                        .stream); ReplayFileError (file:line), PathError, PayloadError below the root
    └── StoreError           gateway: the sample store cannot be opened or refused a write

Third-party errors (paho, SQLite, YAML, pydantic) are translated at the boundary with `raise … from`.
"""


class EdgeKernelError(Exception):
    """Base class of every error edgekernel raises on purpose."""
