"""What the review pages accept from query strings and forms. Django's fields refuse what would otherwise fail
further down: text with a NUL byte (PostgreSQL stores none), numbers that are no number or too long for int()."""
from django import forms

from review.selectors import QUEUE_STATUSES


class QueueFilterForm(forms.Form):
    project = forms.IntegerField(required=False)
    status = forms.ChoiceField(required=False, choices=[("", "waiting"), *((name, name) for name in QUEUE_STATUSES)],
                               error_messages={"invalid_choice": f"one of {', '.join(QUEUE_STATUSES)}, or none"})
    label = forms.CharField(required=False)
    min = forms.FloatField(required=False)
    max = forms.FloatField(required=False)
    reviewer = forms.CharField(required=False)


class NextForm(forms.Form):
    project = forms.IntegerField(required=False)
    skip = forms.IntegerField(required=False, help_text="the image the reviewer is moving on from")


class DecisionForm(forms.Form):
    comment = forms.CharField(required=False)
    label = forms.CharField(required=False)


class ApproveForm(DecisionForm):
    mask_version = forms.IntegerField(required=False, help_text="the version the page showed")


class RestoreForm(forms.Form):
    parent_version = forms.IntegerField(required=False, help_text="the latest version the page showed")
