"""Every string the screen shows, in every language it speaks: one catalogue.

Keys are the same in each language; :func:`text` formats one. A missing key in a language
falls back to English (a test checks that none is missing).
"""

from __future__ import annotations

from collections.abc import Mapping

EN = "en"
ZH_CN = "zh-CN"
LANGUAGES = (EN, ZH_CN)

CATALOGUE: Mapping[str, Mapping[str, str]] = {
    EN: {
        "connecting": "Connecting to the updater…",
        "reconnecting": "Reconnecting…",
        "unreadable": "Cannot read the updater's answers; retrying…",
        "unreadable_banner": "Cannot read the updater; retrying…",
        "idle": "No update in progress",
        "idle_detail": "The printer is ready to use",
        "downloading": "Downloading the update",
        "verifying": "Checking the downloaded update",
        "ready": "The update is ready to install",
        "ready_detail": "The install begins when you start it from the printer's app",
        "ready_note": "The printer then stops, installs {version} and restarts by itself",
        "waiting_idle": "Waiting for the printer to be free",
        "asking_printer": "asking the printer",
        "deploying": "Preparing the new version",
        "switching": "Installing the new version",
        "health_check": "Checking that the new version works",
        "updater_staging": "Updating the updater",
        "updater_switching": "Restarting the updater",
        "updater_probation": "Checking the new updater",
        "rollback_previous": "Something went wrong: restoring {target}",
        "rollback_factory": "Restoring the factory version {target}",
        "do_not_power_off": "Please do not turn off the printer",
        "versions": "{old} → {new}",
        "version_only": "Version {new}",
        "update_to": "Update to {new}",
        "transfer": "{done} of {total}",
        "speed": "{speed}/s",
        "retrying": "trying again in {n} s (attempt {attempt} of {attempts})",
        "eta_s": "about {n} s left",
        "eta_min": "about {n} min left",
        "mb": "{n} MB",
        "success": "Updated to {version}",
        "success_detail": "The printer is ready to use",
        "restored": "The update failed; the printer was restored to {version} — it is safe to use",
        "restored_factory": (
            "The update failed; the printer was restored to its factory version {version}"
            " — it is safe to use"
        ),
        "unchanged": "The update could not be installed; the printer is unchanged on {version}"
        " — it is safe to use",
        "unchanged_no_version": "The update could not be installed; the printer is unchanged"
        " — it is safe to use",
        "cancelled": "The update was cancelled; the printer is unchanged — it is safe to use",
        "manual_rollback": "The printer was restored to {version}",
        "attention": "The update failed and the printer could not be restored",
        "attention_detail": "Please contact service before using the printer",
        "reason": "Reason: {reason}",
        "code": "Code: {code}",
        "reason_download": "the download did not succeed",
        "reason_incomplete": "the download kept being cut off",
        "reason_damaged": "the downloaded update is damaged",
        "reason_not_genuine": "the update package is not genuine (its signature does not match)",
        "reason_unsigned": "the update package is not signed, and this printer requires it",
        "reason_space": "there is not enough storage space",
        "reason_invalid": "the update package is not valid",
        "reason_wrong_version": "the package holds another version than the one requested",
        "reason_model": "the update is for another printer model",
        "reason_deploy": "the new version could not be put in place",
        "reason_older": "the update is older than the installed version",
        "reason_delta": "the update does not fit the installed version",
        "reason_expired": "the downloaded update is too old; download it again",
        "reason_stop": "the printer's software could not be stopped for the install",
        "reason_start": "the new version did not start",
        "reason_post_cmd": "a setup step of the new version failed",
        "reason_health": "the new version started but did not pass its health check",
        "reason_interrupted": "the install was interrupted too many times",
        "reason_updater": "the new updater could not be installed",
        "reason_other": "an unexpected problem",
        "done": "Done",
        "closes_in": "This screen closes in {n} s",
    },
    ZH_CN: {
        "connecting": "正在连接更新程序…",
        "reconnecting": "正在重新连接…",
        "unreadable": "无法读取更新程序的应答，正在重试…",
        "unreadable_banner": "无法读取更新程序，正在重试…",
        "idle": "当前没有更新",
        "idle_detail": "打印机可以正常使用",
        "downloading": "正在下载更新",
        "verifying": "正在检查下载的更新",
        "ready": "更新已就绪，等待安装",
        "ready_detail": "在打印机的应用中启动安装后，安装即会开始",
        "ready_note": "届时打印机将暂停工作，安装 {version} 后自动重新启动",
        "waiting_idle": "正在等待打印机空闲",
        "asking_printer": "正在询问打印机",
        "deploying": "正在准备新版本",
        "switching": "正在安装新版本",
        "health_check": "正在检查新版本是否正常运行",
        "updater_staging": "正在更新升级程序",
        "updater_switching": "正在重启升级程序",
        "updater_probation": "正在检查新的升级程序",
        "rollback_previous": "出现问题：正在恢复到 {target}",
        "rollback_factory": "正在恢复到出厂版本 {target}",
        "do_not_power_off": "请勿关闭打印机电源",
        "versions": "{old} → {new}",
        "version_only": "版本 {new}",
        "update_to": "更新到 {new}",
        "transfer": "{done} / {total}",
        "speed": "{speed}/秒",
        "retrying": "{n} 秒后重试（第 {attempt} 次，共 {attempts} 次）",
        "eta_s": "剩余约 {n} 秒",
        "eta_min": "剩余约 {n} 分钟",
        "mb": "{n} MB",
        "success": "已更新到 {version}",
        "success_detail": "打印机可以正常使用",
        "restored": "更新失败，打印机已恢复到 {version}，可以放心使用",
        "restored_factory": "更新失败，打印机已恢复到出厂版本 {version}，可以放心使用",
        "unchanged": "更新未能安装，打印机仍为 {version}，可以放心使用",
        "unchanged_no_version": "更新未能安装，打印机未作更改，可以放心使用",
        "cancelled": "更新已取消，打印机未作更改，可以放心使用",
        "manual_rollback": "打印机已恢复到 {version}",
        "attention": "更新失败，打印机未能恢复",
        "attention_detail": "使用打印机前请联系售后服务",
        "reason": "原因：{reason}",
        "code": "代码：{code}",
        "reason_download": "下载未成功",
        "reason_incomplete": "下载多次中断",
        "reason_damaged": "下载的更新已损坏",
        "reason_not_genuine": "更新包不是正版（签名不符）",
        "reason_unsigned": "更新包没有签名，而这台打印机要求签名",
        "reason_space": "存储空间不足",
        "reason_invalid": "更新包无效",
        "reason_wrong_version": "更新包中的版本与所请求的版本不同",
        "reason_model": "更新适用于其他型号的打印机",
        "reason_deploy": "新版本未能就位",
        "reason_older": "更新的版本比已安装的版本旧",
        "reason_delta": "更新与已安装的版本不匹配",
        "reason_expired": "下载的更新已过期，请重新下载",
        "reason_stop": "无法为安装停止打印机的软件",
        "reason_start": "新版本未能启动",
        "reason_post_cmd": "新版本的一个设置步骤失败",
        "reason_health": "新版本已启动，但未通过健康检查",
        "reason_interrupted": "安装被中断的次数过多",
        "reason_updater": "新的更新程序未能安装",
        "reason_other": "出现了意外问题",
        "done": "完成",
        "closes_in": "此屏幕将在 {n} 秒后关闭",
    },
}


def normalise_language(value: str | None) -> str | None:
    """``zh``, ``zh_CN.UTF-8``, ``zh-cn``, ``zh-Hans`` → ``zh-CN``; ``en_US`` → ``en``.

    None when ``value`` names no language the catalogue has (``C``, ``POSIX``, ``fr_FR``).
    """
    if not value:
        return None
    tag = value.split(".", 1)[0].split("@", 1)[0].replace("_", "-").lower()
    if tag == "zh" or tag.startswith(("zh-cn", "zh-hans", "zh-sg")):
        return ZH_CN
    if tag == "en" or tag.startswith("en-"):
        return EN
    return None


def language_from_environment(env: Mapping[str, str]) -> str:
    """The language of the locale (``LC_ALL`` > ``LC_MESSAGES`` > ``LANG``), else English."""
    for name in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(name)
        if value:
            return normalise_language(value) or EN
    return EN


def text(lang: str, key: str, **values: object) -> str:
    """The string ``key`` in ``lang`` (English if that language lacks it), formatted."""
    template = CATALOGUE.get(lang, CATALOGUE[EN]).get(key) or CATALOGUE[EN][key]
    return template.format(**values)
