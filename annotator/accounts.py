"""The login form: Django's, with the user name's length checked."""
from django.contrib.auth.forms import AuthenticationForm
from django.core.validators import MaxLengthValidator


class LoginForm(AuthenticationForm):
    """AuthenticationForm sets the user name's max_length only after the field is made, so nothing checks it: a name
    too long for any account went on to django-axes, whose record of the failed login cannot hold it (a 500)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["username"].validators.append(MaxLengthValidator(self.fields["username"].max_length))
