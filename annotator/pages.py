"""What the server-rendered pages share."""
from typing import Callable

from django.contrib import messages


def action_report(request, action: Callable, refused: tuple[type[Exception], ...], success: Callable[..., str]) -> None:
    """Do a page's `action()` and tell the user how it went: `success(result)`, or why it was refused (an error of
    the `refused` kinds, which a service raises with a message meant for people)."""
    try:
        result = action()
    except refused as error:
        messages.error(request, str(error))
    else:
        messages.success(request, success(result))
