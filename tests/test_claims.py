"""Taking the next image: one reviewer per image at a time, claims expire, and the queue filters by status."""
from datetime import timedelta

from django.db import connection
from django.utils import timezone

from annotator.models import Image, Membership
from annotator.tallies import tallies_rebuild
from review.services import image_claim_next
from tests.conftest import at_once
from tests.factories import annotated_image


def second_radiologist(team):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user("second", password="a-long-test-password")
    Membership.objects.create(project=team.project, user=user, role=Membership.Role.RADIOLOGIST)
    return user


def claim_at_once(users, project):
    """Every user asks for the next image at the same moment; what each got, by username."""
    claimed = at_once(lambda user: image_claim_next(user, project), users)
    return {user.username: image for user, image in claimed.items()}


def test_two_reviewers_asking_at_once_never_get_the_same_image(team, transactional_db):
    assert connection.vendor == "postgresql", "the race is tested on PostgreSQL: use `make test`"
    other = second_radiologist(team)
    for i in range(2):
        annotated_image(team.project, f"scan{i}.png", uncertainty=0.5 + i / 10, flagged=True)
    for _ in range(5):
        Image.objects.update(claimed_by=None, claim_expires_at=None)
        got = claim_at_once([team.radiologist, other], team.project)
        assert got["radiologist"] and got["second"] and got["radiologist"].pk != got["second"].pk

    Image.objects.update(claimed_by=None, claim_expires_at=None)
    Image.objects.filter(original_name="scan1.png").update(review_status="approved")
    tallies_rebuild()  # the status was set behind the services' back
    for _ in range(5):
        Image.objects.update(claimed_by=None, claim_expires_at=None)
        got = claim_at_once([team.radiologist, other], team.project)
        assert sorted(bool(image) for image in got.values()) == [False, True]


def test_next_takes_the_queue_head_skips_held_images_and_takes_expired_claims(team):
    other = second_radiologist(team)
    first = annotated_image(team.project, "first.png", uncertainty=0.9, flagged=True)
    second = annotated_image(team.project, "second.png", uncertainty=0.2, flagged=True)
    assert image_claim_next(team.radiologist) == first
    assert image_claim_next(other) == second
    assert image_claim_next(team.admin) is None  # both held
    Image.objects.filter(pk=first.pk).update(claim_expires_at=timezone.now() - timedelta(seconds=1))
    assert image_claim_next(team.admin) == first


def test_viewers_cannot_claim_images(team):
    annotated_image(team.project, "scan.png", flagged=True)
    assert image_claim_next(team.viewer) is None and image_claim_next(team.outsider) is None
    assert Image.objects.get().claimed_by is None


def test_taking_a_new_image_releases_the_old_claim_and_deciding_ends_it(team):
    first = annotated_image(team.project, "first.png", uncertainty=0.9, flagged=True)
    second = annotated_image(team.project, "second.png", uncertainty=0.2, flagged=True)
    client = team.client(team.radiologist)
    assert client.get("/review/next/").status_code == 405  # claiming changes state: never on a GET
    response = client.post("/review/next/")
    assert response.status_code == 302 and response.url == f"/review/images/{first.pk}/"
    client.post(f"/review/images/{first.pk}/approve/")
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.claimed_by is None and second.claimed_by == team.radiologist  # approve moved on to the next
    assert client.post("/review/next/").url == f"/review/images/{second.pk}/"
    third = annotated_image(team.project, "third.png", uncertainty=0.1, flagged=True)
    assert client.post(f"/review/next/?skip={second.pk}").url == f"/review/images/{third.pk}/"  # N moves on


def test_queue_filters_and_counts_per_status(team):
    annotated_image(team.project, "waiting.png", uncertainty=0.8, flagged=True)
    held = annotated_image(team.project, "held.png", uncertainty=0.6, flagged=True)
    done = annotated_image(team.project, "done.png", uncertainty=0.3)
    image_claim_next(team.radiologist)  # takes waiting.png, the queue head
    Image.objects.filter(pk=held.pk).update(claimed_by=team.admin,
                                            claim_expires_at=timezone.now() + timedelta(minutes=5))
    team.api(team.radiologist).post(f"/api/images/{done.pk}/approve/")
    client = team.client(team.radiologist)

    def names(query):
        page = client.get(f"/review/?{query}")
        return [i.original_name for i in page.context["images"]], page.context["counts"]

    shown, counts = names("")
    assert shown == ["waiting.png", "held.png"]
    assert counts == {"pending": 0, "in_review": 2, "approved": 1, "rejected": 0}
    assert names("status=approved")[0] == ["done.png"]
    assert names("min=0.7")[0] == ["waiting.png"]
    assert names("max=0.7")[0] == ["held.png"]
    assert names("reviewer=admin")[0] == ["held.png"]
    assert names("label=normal")[0] == []
