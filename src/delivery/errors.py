"""Domain errors. Services raise these; `delivery.api.errors` maps them to HTTP once."""


class DeliveryError(Exception):
    pass


class NotFound(DeliveryError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class Unauthenticated(DeliveryError):
    pass


class ServiceUnavailable(DeliveryError):
    """A backing service (database, key-value store, broker) did not answer."""

    def __init__(self, service: str) -> None:
        super().__init__(f"{service} is unavailable")
        self.service = service


class AnswerLost(ServiceUnavailable):
    """A backing service failed to answer a request it may have carried out (a connection lost or timed
    out once the request was sent), as opposed to one it refused."""


class TransportCompanyConflict(DeliveryError):
    def __init__(self, holder_id: int) -> None:
        super().__init__(f"the package is already bound to transport company {holder_id}")
        self.holder_id = holder_id


class RateUnavailable(DeliveryError):
    """The bank's USD/RUB rate could not be had (network failure, bad answer, or a failed peer fetch)."""


class InvalidField(DeliveryError):
    """Input that passed the schema but not a check against the data (e.g. an unknown type id)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class RegistrationImpossible(DeliveryError):
    """A registration job that can never succeed (e.g. its type was deleted): its status becomes `failed`."""
