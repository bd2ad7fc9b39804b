from tests.support.rig import prepay


async def test_prepay_commit_round_trip(client, his):
    answer = await client.call("prepay.commit", prepay("T100"))
    assert answer.http_status == 200, answer.body
    assert answer.status == "done" and answer.result["receipt_no"]
