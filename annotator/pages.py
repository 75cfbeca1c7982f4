"""What the server-rendered pages share."""
from typing import Callable

from django.contrib import messages
from django.core.exceptions import BadRequest


def action_report(request, action: Callable, refused: tuple[type[Exception], ...], success: Callable[..., str]) -> None:
    """Do a page's `action()` and tell the user how it went: `success(result)`, or why it was refused (an error of
    the `refused` kinds, which a service raises with a message meant for people)."""
    try:
        result = action()
    except refused as error:
        messages.error(request, str(error))
    else:
        messages.success(request, success(result))


def form_errors_text(form) -> str:
    """The form's errors in one line, by field name: `min: Enter a number.`"""
    return "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())


def form_data(form) -> dict:
    """The cleaned data of a form, or BadRequest (a 400 page) naming each wrong field: for what the page's own form
    and links never send, so only a hand-made request sees it."""
    if not form.is_valid():
        raise BadRequest(form_errors_text(form))
    return form.cleaned_data
