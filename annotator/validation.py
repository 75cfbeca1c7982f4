"""Request bodies and query strings checked against a serializer: anything else is a 400 naming the field."""
from rest_framework.serializers import Serializer


def request_validated(request, serializer_class: type[Serializer]) -> dict:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def query_validated(request, serializer_class: type[Serializer]) -> dict:
    serializer = serializer_class(data=request.query_params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
