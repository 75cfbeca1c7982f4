"""Request bodies checked against a serializer: anything else is a 400 naming the field."""
from rest_framework.serializers import Serializer


def request_validated(request, serializer_class: type[Serializer]) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
